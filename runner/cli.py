"""``streamward runner``: placeholder until the runner lands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run a runner replica.")
