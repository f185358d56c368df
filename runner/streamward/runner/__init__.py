"""A runner replica: claims sessions, runs their inputs, ships transcripts, fails over.

The public surface for handler authors is this package: ``from streamward.runner import
Handler, RunContext`` (docs/runner.md, "Handler contract"). Every other module here is the
runner's own and may change.
"""

from streamward.runner.context import Handler, RunContext

__all__ = ["Handler", "RunContext"]
