"""Contract tests run on one anvil with the marketplace deployed once per module; each test
starts from a snapshot and is reverted afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.contracts.world import World, build_world


@pytest.fixture(scope="module")
def _deployed(anvil) -> Iterator[World]:
    snapshot = anvil.snapshot()
    world = build_world(anvil)
    yield world
    anvil.revert(snapshot)
    world.resync()


@pytest.fixture
def world(_deployed: World, anvil) -> Iterator[World]:
    snapshot = anvil.snapshot()
    yield _deployed
    anvil.revert(snapshot)
    _deployed.resync()
