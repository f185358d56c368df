"""A runner replica: claims sessions, runs their inputs, ships transcripts, fails over.

The public surface for handler authors is this package: ``from streamward.runner import
Session, SessionContext, RunContext`` (docs/runner.md, "Writing a session host") and the
function handler type ``Handler``. Every other module here is the runner's own and may change.
"""

from streamward.runner.archive_reads import TranscriptUnavailable
from streamward.runner.context import Handler, RunContext, SessionLost, StateTooLarge
from streamward.runner.lifecycle import Session, SessionContext

__all__ = [
    "Handler",
    "RunContext",
    "Session",
    "SessionContext",
    "SessionLost",
    "StateTooLarge",
    "TranscriptUnavailable",
]
