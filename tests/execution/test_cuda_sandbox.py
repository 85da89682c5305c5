"""What a CUDA job's sandbox is given on a machine whose NVIDIA driver lives outside /usr (as on
the GPU machine where the CUDA path first ran: the driver mounted at /usr/local/nvidia, the
loader cache also naming /lib). Checked on the command, since this machine has no GPU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from meshcompute.execution import sandbox
from meshcompute.execution.sandbox import build_command, cuda_driver_dirs


@pytest.fixture
def driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A driver folder outside /usr on LD_LIBRARY_PATH; the loader cache names /lib too."""
    folder = tmp_path / "nvidia" / "lib64"
    folder.mkdir(parents=True)
    (folder / "libcuda.so.1").write_bytes(b"")
    monkeypatch.setenv("LD_LIBRARY_PATH", f"{folder}:/nonexistent")
    monkeypatch.setattr(sandbox, "_loader_cache_dirs",
                        lambda library: ["/lib", "/usr/lib/x86_64-linux-gnu", "/gone/driver"])
    cuda_driver_dirs.cache_clear()
    yield folder
    cuda_driver_dirs.cache_clear()


def test_the_driver_folder_outside_usr_is_found_and_nothing_the_sandbox_already_has(
        driver: Path) -> None:
    # /lib is bound as the host has it (often a link into /usr), /usr is bound whole, and a
    # folder that is not there cannot be bound at all
    assert cuda_driver_dirs() == (str(driver),)


def test_a_cuda_job_gets_the_driver_folder_read_only_and_on_its_library_path(
        requires_sandbox: None, driver: Path, tmp_path: Path) -> None:
    command = build_command(tmp_path, ["true"], device="cuda")
    at = command.index(str(driver))
    assert command[at - 1] == "--ro-bind" and command[at + 1] == str(driver)
    at = command.index("LD_LIBRARY_PATH")
    assert command[at + 1] == str(driver)
    # bubblewrap accepts the command: the folder is bound and nothing else changed
    assert subprocess.run(command, capture_output=True, timeout=30,
                          check=False).returncode == 0
    cpu = build_command(tmp_path, ["true"])
    assert str(driver) not in cpu and "LD_LIBRARY_PATH" not in cpu


def test_a_job_knows_its_user_without_a_password_file(requires_sandbox: None,
                                                      tmp_path: Path) -> None:
    # torch's CUDA start-up asks getpass.getuser(); the sandbox has no /etc/passwd, and on the
    # GPU machine every CUDA job died with "getpwuid(): uid not found: 65534" until the job's
    # environment named its user
    import sys

    command = build_command(tmp_path, [sys.executable, "-c",
                                       "import getpass; print(getpass.getuser())"])
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "nobody"
