"""A checkout and a virtual environment under /tmp work in the sandbox.

The sandbox gives each job a private ``/tmp``. It used to be mounted after the interpreter's and
the project's folders were bound, which hid both when they lived under ``/tmp``
(``bwrap: execvp /tmp/.../.venv/bin/python: No such file or directory``): every job of a
checkout under ``/tmp`` failed. Here a fresh virtual environment and a copy of the
``meshcompute`` package, both under ``/tmp``, build the sandbox command themselves and run a job
process through it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import meshcompute

# Runs in the /tmp interpreter, with the /tmp copy of the package first on its path: builds the
# real bwrap command and runs, inside it, the same interpreter importing the same package copy.
DRIVER = r"""
import json, subprocess, sys, tempfile
from pathlib import Path
import meshcompute.execution.sandbox as sandbox
box = Path(tempfile.mkdtemp(dir=sys.argv[1]))
inner = ("import json, sys, meshcompute.execution.tensorfile as t; "
         "print(json.dumps([sys.executable, sys.prefix, t.__file__]))")
command = sandbox.build_command(box, [sys.executable, "-c", inner])
done = subprocess.run(command, capture_output=True, text=True, timeout=60)
print(json.dumps({"rc": done.returncode, "out": done.stdout, "err": done.stderr[-2000:],
                  "package": str(sandbox.PACKAGE_DIR)}))
"""


@pytest.fixture
def tmp_checkout(requires_sandbox: None):
    root = Path(tempfile.mkdtemp(prefix="mesh-checkout-", dir="/tmp"))
    try:
        venv = root / ".venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                       timeout=120)
        package = Path(meshcompute.__file__).resolve().parent
        shutil.copytree(package, root / "meshcompute",
                        ignore=shutil.ignore_patterns("__pycache__", "artifacts"))
        scratch = root / "scratch"
        scratch.mkdir()
        yield root, venv / "bin" / "python", scratch
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_job_process_runs_from_a_checkout_and_venv_under_tmp(tmp_checkout) -> None:
    root, python, scratch = tmp_checkout
    done = subprocess.run(
        [str(python), "-c", textwrap.dedent(DRIVER), str(scratch)],
        check=False, capture_output=True, text=True, timeout=120, cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "HOME": str(Path.home())},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["package"] == str(root / "meshcompute")
    assert report["rc"] == 0, report["err"]
    executable, prefix, module = json.loads(report["out"])
    assert prefix == str(root / ".venv")
    assert executable.startswith(str(root))
    assert module == str(root / "meshcompute" / "execution" / "tensorfile.py")


def test_a_runner_can_pin_the_cpu_kernels_the_job_uses(requires_sandbox: None, tmp_path) -> None:
    """The verifier's second numeric setup runs torch's plainest kernels, as an older CPU."""
    from meshcompute.errors import BadInput
    from meshcompute.execution.sandbox import JobRunner, build_command

    command = build_command(tmp_path, ["true"], cpu_capability="default")
    at = command.index("ATEN_CPU_CAPABILITY")
    assert command[at - 1:at + 2] == ["--setenv", "ATEN_CPU_CAPABILITY", "default"]
    assert "ATEN_CPU_CAPABILITY" not in build_command(tmp_path, ["true"])
    with pytest.raises(BadInput, match="cpu_capability"):
        JobRunner(cpu_capability="sse9", scratch_root=tmp_path)
