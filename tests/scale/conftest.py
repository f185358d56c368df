"""Real local topologies for tests/scale/ (each module marks its tests ``topology``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streamward.tools.topology import LocalCluster, LocalSentinel


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """3 masters + 3 replicas for the non-destructive tests of a module."""
    with LocalCluster(masters=3, replicas_per_master=1) as c:
        yield c


@pytest.fixture
def own_cluster() -> Iterator[LocalCluster]:
    """A cluster of its own, for a test that kills a master."""
    with LocalCluster(masters=3, replicas_per_master=1) as c:
        yield c


@pytest.fixture
def own_sentinel() -> Iterator[LocalSentinel]:
    """1 master + 1 replica + 3 Sentinels of its own, for a test that kills the master."""
    with LocalSentinel(replicas=1, sentinels=3) as s:
        yield s
