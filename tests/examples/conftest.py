"""The runner tests' fleet fixtures (a real API, runners with a 2 s replica TTL)."""

from tests.runner.conftest import api_fleet as api_fleet
from tests.runner.conftest import rc as rc
