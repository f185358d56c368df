"""Example session hosts shipped with streamward: load one with
``streamward runner --handler streamward.runner.examples.chat:Chat`` (docs/runner.md,
"Example hosts"). They use only the public handler API, ``streamward.runner``."""
