"""``echo``: the built-in function handler, as a stateless host (a function is wrapped in
one). ``--handler streamward.runner.examples.echo:echo`` is the same as the default."""

from streamward.runner.handlers import echo

__all__ = ["echo"]
