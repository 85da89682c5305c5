"""docker-compose.yml: valid structure, health-gated start order, and every command it runs
exists in the package (``mesh ...`` commands and their options, ``celery -A`` apps)."""

from __future__ import annotations

import importlib
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from meshcompute.mesh.cli.main import app
from meshcompute.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
REQUIRED = {"anvil", "redis", "market-api", "celery-worker", "celery-beat", "verifier",
            "verifier-2", "worker"}
ONE_SHOT = {"deploy"}
#: Variables read by docker/provider-entrypoint.sh or by a CLI option (not Settings fields).
SCRIPT_VARIABLES = {
    "MESH_DEPLOYER_KEY",  # mesh chain deploy --key-env default
    "MESH_DEV_FUND", "MESH_STAKE", "MESH_PROVIDER_KEY_FILE",  # provider-entrypoint.sh
}
_DEFAULTED = re.compile(r"\$\{[A-Z0-9_]+:-([^}]*)\}")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _expand(text: str) -> str:
    """Substitute ``${VAR:-default}`` with its default, as compose does with VAR unset."""
    return _DEFAULTED.sub(lambda m: m.group(1), text)


def _argv(command: Any) -> list[str]:
    if isinstance(command, list):
        return [_expand(str(part)) for part in command]
    return shlex.split(_expand(str(command)))


def test_compose_has_every_service_with_health_checks() -> None:
    services = _compose()["services"]
    assert REQUIRED <= set(services), f"missing services: {REQUIRED - set(services)}"
    for name, service in services.items():
        if name not in ONE_SHOT:
            assert "healthcheck" in service, f"{name} has no healthcheck"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition["condition"] in {
                "service_healthy", "service_completed_successfully"
            }, f"{name} -> {dependency} does not wait for health"


def test_compose_environment_is_documented_settings() -> None:
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    known = fields | {"REDIS_URL"} | SCRIPT_VARIABLES
    data = _compose()
    envs = [data["x-mesh-env"]] + [s.get("environment") or {} for s in data["services"].values()]
    for env in envs:
        for key in env:
            if key.startswith("MESH_") or key == "REDIS_URL":
                assert key in known, f"{key} is neither a Settings field nor a documented script variable"


def _commands() -> list[list[str]]:
    argvs = []
    for service in _compose()["services"].values():
        if "command" in service:
            argvs.append(_argv(service["command"]))
        test = (service.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test and test[0] == "CMD":
            argvs.append(_argv(test[1:]))
        elif isinstance(test, list) and test and test[0] == "CMD-SHELL":
            argvs.append(_argv(test[1]))
    return argvs


@pytest.mark.parametrize(
    "argv", [a for a in _commands() if a[0] == "mesh"], ids=lambda a: " ".join(a[:3])
)
def test_every_mesh_command_in_compose_exists(argv: list[str]) -> None:
    # --help is eager, but click still rejects unknown options first: this checks both.
    result = CliRunner().invoke(app, [*argv[1:], "--help"])
    assert result.exit_code == 0, f"`{' '.join(argv)}` failed: {result.output}"


def test_every_celery_app_in_compose_exists() -> None:
    apps = {a[a.index("-A") + 1] for a in _commands() if a[0] == "celery"}
    assert apps, "compose runs no celery service"
    for module in apps:
        celery_app = getattr(importlib.import_module(module), "app", None)
        assert celery_app is not None and hasattr(celery_app, "send_task"), module


def test_entrypoint_script_exists_and_is_executable() -> None:
    script = ROOT / "docker" / "provider-entrypoint.sh"
    assert script.exists() and script.stat().st_mode & 0o111


def _has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], check=False, capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(
    not _has_compose(),
    reason="docker compose is not installed here; the parsing tests above cover the file",
)
def test_docker_compose_config_accepts_the_file() -> None:
    subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "-q"], check=True)


def test_secrets_and_volumes_resolve() -> None:
    data = _compose()
    secrets, volumes = data.get("secrets") or {}, data.get("volumes") or {}
    for name, service in data["services"].items():
        for secret in service.get("secrets") or []:
            assert secret in secrets, f"{name} uses undeclared secret {secret}"
        for mount in service.get("volumes") or []:
            source = str(mount).split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name} mounts undeclared volume {source}"
    for secret in secrets.values():
        assert (ROOT / _expand(secret["file"])).is_file(), secret


def _service_key(service: dict[str, Any]) -> str:
    """The private key file a provider service imports (its secret's default, a dev key)."""
    env_path = service["environment"]["MESH_PROVIDER_KEY_FILE"]
    (secret,) = service["secrets"]
    assert env_path == f"/run/secrets/{secret}"
    return (ROOT / _expand(_compose()["secrets"][secret]["file"])).read_text().strip()


def test_two_verifiers_each_granted_the_role_at_deploy() -> None:
    """Appeals need a verifier other than the auditor (the draw never assigns an appeal to
    that one): compose runs two equal verifiers, and the deploy step grants both."""
    from eth_account import Account
    from typer.main import get_command

    services = _compose()["services"]
    assert _argv(services["verifier-2"]["command"]) == _argv(services["verifier"]["command"])
    addresses = {Account.from_key(_service_key(services[name])).address
                 for name in ("verifier", "verifier-2")}
    assert len(addresses) == 2, "the two verifiers must hold different keys"
    assert services["verifier"]["volumes"] != services["verifier-2"]["volumes"]

    argv = _argv(services["deploy"]["command"])
    assert argv[:3] == ["mesh", "chain", "deploy"]
    deploy = get_command(app).commands["chain"].commands["deploy"]  # type: ignore[attr-defined]
    params = deploy.make_context("deploy", argv[3:]).params  # the real option parser
    assert set(params["verifier"]) == addresses
