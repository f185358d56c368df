"""The fencing checker, now ``api.chaos_check`` (the package cannot import from tests/).

Re-exported so the topology tests and the checker's own tests keep their imports.
"""

from __future__ import annotations

from streamward.tools.chaos_check import FencingEntry, check_all_logs, check_log_fencing, read_log

__all__ = ["FencingEntry", "check_all_logs", "check_log_fencing", "read_log"]
