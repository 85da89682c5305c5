"""Settings: defaults, MESH_ environment variables, REDIS_URL, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcompute.errors import ConfigError
from meshcompute.settings import DEV_MNEMONIC, Settings, get_settings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch):
    for name in ("MESH_DATA_DIR", "MESH_DEPLOYMENTS_DIR", "MESH_REDIS_URL", "REDIS_URL",
                 "MESH_RPC_URL", "MESH_TX_RECEIPT_TIMEOUT_S", "MESH_CHAIN_ID"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_defaults():
    settings = Settings()

    assert settings.rpc_url is None
    assert settings.data_dir == Path("~/.mesh").expanduser()
    assert settings.deployments_dir == settings.data_dir / "deployments"
    assert settings.tx_receipt_timeout_s == 30
    assert DEV_MNEMONIC.endswith("junk")


def test_every_field_is_documented():
    assert all(field.description for field in Settings.model_fields.values())


def test_environment_with_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MESH_CHAIN_ID", "31337")

    settings = Settings()

    assert settings.chain_id == 31337
    assert settings.deployments_dir == tmp_path / "deployments"


@pytest.mark.parametrize("name", ["REDIS_URL", "MESH_REDIS_URL"])
def test_redis_url_from_either_variable(monkeypatch, name):
    monkeypatch.setenv(name, "redis://example:6379/0")
    assert Settings().redis_url == "redis://example:6379/0"


def test_invalid_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("MESH_TX_RECEIPT_TIMEOUT_S", "soon")

    with pytest.raises(ConfigError, match="MESH_TX_RECEIPT_TIMEOUT_S") as failed:
        load_settings()
    assert isinstance(failed.value, ValueError)


def test_get_settings_is_cached():
    assert get_settings() is get_settings()
