"""A test kit for session host authors: ``SessionHarness`` drives a host in process, with no
server, running the project's real Lua scripts on fakeredis (docs/runner.md, "Testing your
host"). Needs the ``testkit`` extra (``pip install 'streamward[testkit]'``)."""

from streamward.testing.harness import Instance, RunResult, SessionHarness

__all__ = ["Instance", "RunResult", "SessionHarness"]
