"""The test-only lazy verifier is off unless asked for, and never runs off the dev chain."""

from __future__ import annotations

import pytest

from meshcompute.errors import ConfigError
from meshcompute.mesh.lazy_verifier import ENV_LAZY_VERIFIER, lazy_verifier_from_env
from meshcompute.units import DEV_CHAIN_ID


def test_off_unless_set() -> None:
    assert lazy_verifier_from_env(DEV_CHAIN_ID, {}) is False
    assert lazy_verifier_from_env(DEV_CHAIN_ID, {ENV_LAZY_VERIFIER: "0"}) is False
    assert lazy_verifier_from_env(DEV_CHAIN_ID, {ENV_LAZY_VERIFIER: "1"}) is True


def test_refused_on_any_other_chain() -> None:
    with pytest.raises(ConfigError, match="only on the development chain 31337, not chain 1"):
        lazy_verifier_from_env(1, {ENV_LAZY_VERIFIER: "1"})
