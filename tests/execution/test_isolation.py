"""What a job process can see and do, probed with small Python snippets run through the same
bwrap command builder as real jobs (a job graph cannot do I/O itself: the operator allowlist
forbids it)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from meshcompute.execution.sandbox import build_command
from meshcompute.settings import get_settings

PROBE = r"""
import json, os, socket, sys
report = {}
def attempt(name, fn):
    try:
        report[name] = ["ok", repr(fn())[:200]]
    except Exception as exc:
        report[name] = ["error", type(exc).__name__]
targets = json.loads(sys.argv[1])
attempt("read_secret", lambda: open(targets["secret"]).read())
attempt("list_home", lambda: os.listdir(targets["home"]))
attempt("list_mesh", lambda: os.listdir(targets["mesh"]))
attempt("list_other_job", lambda: os.listdir(targets["other_job"]))
attempt("connect_local", lambda: socket.create_connection(("127.0.0.1", targets["port"]), 3))
attempt("connect_remote", lambda: socket.create_connection(("1.1.1.1", 53), 3))
attempt("write_usr", lambda: open("/usr/mesh-probe", "w"))
attempt("write_code", lambda: open(targets["code"], "w"))
attempt("write_scratch", lambda: open("/job/probe.txt", "w").write("hi"))
attempt("uid", os.getuid)
attempt("caps", lambda: [l for l in open("/proc/self/status") if l.startswith("CapEff")][0].split()[1])
attempt("pids", lambda: sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
print(json.dumps(report))
"""


@pytest.fixture
def probe_report(requires_sandbox: None, tmp_path: Path) -> dict[str, list[str]]:
    home = Path.home()
    secret = home / f".mesh-sandbox-probe-{uuid.uuid4().hex}"
    secret.write_text("provider secret")
    other_job = tmp_path / "other-job"
    other_job.mkdir()
    (other_job / "inputs.safetensors").write_bytes(b"someone else's data")
    box = tmp_path / "box"
    box.mkdir()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    targets = {
        "secret": str(secret), "home": str(home), "mesh": str(get_settings().data_dir),
        "other_job": str(other_job), "port": listener.getsockname()[1],
        "code": str(Path(__file__).resolve().parents[2] / "meshcompute" / "execution" / "probe.py"),
    }
    command = build_command(box, [sys.executable, "-c", textwrap.dedent(PROBE),
                                  json.dumps(targets)])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    finally:
        secret.unlink()
        listener.close()
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    report["_scratch"] = ["ok", (box / "probe.txt").read_text()]
    return report


def test_sandbox_hides_home_keystore_and_other_jobs(probe_report: dict[str, list[str]]) -> None:
    for name in ("read_secret", "list_mesh", "list_other_job"):
        assert probe_report[name] == ["error", "FileNotFoundError"], name
    # the home folder may exist as a mount point for the Python installation, but nothing else
    status, listing = probe_report["list_home"]
    assert status == "error" or ".mesh" not in listing and ".mesh-sandbox-probe" not in listing


def test_sandbox_has_no_network(probe_report: dict[str, list[str]]) -> None:
    assert probe_report["connect_local"][0] == "error"
    assert probe_report["connect_remote"][0] == "error"


def test_sandbox_is_read_only_except_scratch(probe_report: dict[str, list[str]]) -> None:
    assert probe_report["write_usr"][0] == "error"
    assert probe_report["write_code"][0] == "error"
    assert probe_report["write_scratch"][0] == "ok"
    assert probe_report["_scratch"] == ["ok", "hi"]


def test_sandbox_drops_privileges_and_sees_only_itself(probe_report: dict[str, list[str]]) -> None:
    assert probe_report["caps"] == ["ok", "'0000000000000000'"]
    status, pids = probe_report["pids"]
    assert status == "ok" and len(json.loads(pids)) <= 3  # bwrap's init, python (+ a helper)
