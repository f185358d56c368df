"""An example handler package, shipped as an image FROM streamward's (see ../Dockerfile)."""
