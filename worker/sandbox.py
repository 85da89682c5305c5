"""Run one job from a stranger: validate in this process, execute in a bubblewrap sandbox.

Public interface (the worker node and the verifier's recomputation call these):

- :func:`run_job` -> :class:`JobOutcome`: one job, in a fresh sandboxed process.
- :class:`JobRunner`: the same, reusable, with an optional warm start (the next job process is
  started, and has imported torch, while the caller is busy with the previous result).
- :func:`sandbox_available`, :class:`~meshcompute.errors.SandboxUnavailable`,
  :func:`build_command` (the exact bwrap command; tests use it to probe the isolation).

This process never imports torch and never loads the program: it checks the archive with
:func:`worker.archive.validate_program` and the tensor files' headers, writes them into a
fresh per-job scratch folder and starts ``python -m worker.execute`` under bubblewrap with:
all namespaces unshared (no network, own pid/ipc/uts, a user namespace mapping the job to
``nobody`` where the kernel allows it), all capabilities dropped, ``--die-with-parent``,
``--new-session``; read-only binds of only ``/usr`` (and ``/lib*``, ``/bin`` as the host has
them), the Python installation, the virtual environment and this project's ``meshcompute`` and
``worker`` packages; a new ``/proc``, a minimal ``/dev`` (plus ``/dev/nvidia*`` for CUDA jobs),
a private ``/tmp``; and the job's scratch folder as the only writable bind, at ``/job``. The
home folder, ``~/.mesh`` (keystore, blobs) and other jobs' folders are not mounted.

Limits: wall time (the whole process group is killed), memory (RLIMIT_DATA set by the job
process to its post-import size plus the job's ``memory_limit_mb``: RLIMIT_AS would count the
large virtual ranges torch and CUDA reserve but never touch; cgroups need privileges a
provider may not have), output size (checked before writing and by RLIMIT_FSIZE), and a fixed
number of torch/OpenMP/MKL threads.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from meshcompute.errors import BadInput, SandboxUnavailable
from worker.archive import validate_program
from worker.tensorfile import read_header

REPO_ROOT = Path(__file__).resolve().parent.parent
SANDBOX_DIR = "/job"
NOBODY = 65534
_RESULT_LIMIT = 1 << 16


@dataclass(frozen=True)
class JobOutcome:
    """How one job ended.

    ``ok`` with ``output`` (safetensors bytes, tensors ``out.0``, ``out.1``, ...) and its
    lowercase hex ``output_sha256``; or not ``ok`` with a ``reason`` the client can read.
    ``wall_s`` is the time spent in :func:`run_job` (validation, start, load, compute,
    collection); ``compute_s`` the forward pass alone, as measured inside the job process.
    """

    ok: bool
    output: bytes | None
    output_sha256: str | None
    reason: str | None
    wall_s: float
    compute_s: float


def _failed(reason: str, started: float, compute_s: float = 0.0) -> JobOutcome:
    return JobOutcome(ok=False, output=None, output_sha256=None, reason=reason,
                      wall_s=time.perf_counter() - started, compute_s=compute_s)


@functools.cache
def _bwrap_flags() -> tuple[str, ...] | None:
    """Namespace flags that work here (with a user namespace if possible), or None."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    base = ("--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL")
    for extra in (("--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)), ()):
        flags = (*base, *extra)
        probe = [bwrap, *flags, *_system_binds(), "--proc", "/proc", "--dev", "/dev", "true"]
        try:
            done = subprocess.run(probe, capture_output=True, timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return flags
    return None


def sandbox_available() -> bool:
    """Whether bubblewrap is installed and can create the sandbox on this machine."""
    return _bwrap_flags() is not None


def _system_binds() -> list[str]:
    binds = ["--ro-bind", "/usr", "/usr"]
    for name in ("lib", "lib64", "lib32", "libx32", "bin", "sbin"):
        path = Path("/") / name
        if path.is_symlink():
            binds += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            binds += ["--ro-bind", str(path), str(path)]
    for name in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d"):
        binds += ["--ro-bind-try", name, name]
    return binds


def _python_roots() -> list[Path]:
    """Folders the interpreter and its packages live in (bound read-only)."""
    roots = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(),
             Path(sys.executable).resolve().parent}
    for package in ("meshcompute", "worker"):
        roots.add(REPO_ROOT / package)
    home = Path.home().resolve()
    for root in roots:
        if root == home or root in home.parents or root == Path("/"):
            raise SandboxUnavailable(f"refusing to expose {root} to jobs (it is, or contains, "
                                     "the home folder); install Python and the worker elsewhere")
    return sorted(r for r in roots if not str(r).startswith("/usr/"))


def _nvidia_devices() -> list[str]:
    return sorted(str(p) for p in Path("/dev").glob("nvidia*"))


def build_command(box: Path, argv: list[str], *, device: str = "cpu", threads: int = 1) -> list[str]:
    """The bwrap command that runs ``argv`` (a command inside the sandbox) with ``box`` as the
    only writable folder, mounted at ``/job`` (the working directory)."""
    flags = _bwrap_flags()
    if flags is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is missing or cannot create namespaces "
                                 "here; install the Debian package 'bubblewrap'")
    command = ["bwrap", *flags, *_system_binds()]
    for root in _python_roots():
        command += ["--ro-bind", str(root), str(root)]
    command += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    if device == "cuda":
        for node in _nvidia_devices():
            command += ["--dev-bind", node, node]
        command += ["--ro-bind-try", "/sys", "/sys"]
    command += ["--bind", str(box), SANDBOX_DIR, "--chdir", SANDBOX_DIR, "--clearenv"]
    for key, value in _job_env(threads, SANDBOX_DIR).items():
        command += ["--setenv", key, value]
    return [*command, "--", *argv]


def _job_env(threads: int, home: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONHASHSEED": "0",
        "LANG": "C.UTF-8",
    }
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[key] = str(threads)
    return env


class _JobProcess:
    """One started job process (sandboxed or not) waiting in ``--serve`` mode."""

    def __init__(self, folder: Path, *, device: str, threads: int, sandboxed: bool) -> None:
        self.folder = folder
        self.box = folder / "box"
        self.box.mkdir(parents=True)
        argv = [sys.executable, "-m", "worker.execute", "--serve"]
        self.stderr = (folder / "stderr.log").open("wb")
        if sandboxed:
            command = build_command(self.box, [*argv, SANDBOX_DIR], device=device, threads=threads)
            env = None
            cwd = None
        else:
            command = [*argv, str(self.box)]
            env = _job_env(threads, str(self.box))
            cwd = self.box
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.stderr,
            start_new_session=True, env=env, cwd=cwd, close_fds=True,
        )
        self.key = (device, threads, sandboxed)

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def wait(self, timeout: float) -> bool:
        """True when it exited in time; otherwise its whole process group is killed."""
        try:
            self.process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            self.kill()
            return False

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def stderr_tail(self) -> str:
        self.stderr.flush()
        try:
            data = (self.folder / "stderr.log").read_bytes()[-2000:]
        except OSError:
            return ""
        return data.decode("utf-8", "replace").strip()

    def discard(self) -> None:
        if self.process.poll() is None:
            self.kill()
        with contextlib.suppress(OSError):
            if self.process.stdin:
                self.process.stdin.close()
        self.stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class JobRunner:
    """Runs jobs one after another with fixed device and thread count.

    With ``warm=True`` the next job process is started as soon as the previous one finishes,
    so its interpreter start and torch import overlap with whatever the caller does between
    jobs. Not thread-safe: use one runner per concurrent job slot. ``close()`` stops the
    waiting process.
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        threads: int = 1,
        scratch_root: Path | None = None,
        allow_unsandboxed: bool = False,
        warm: bool = False,
    ) -> None:
        if device not in ("cpu", "cuda"):
            raise BadInput(f"device must be 'cpu' or 'cuda', got {device!r}")
        if threads < 1:
            raise BadInput("threads must be at least 1")
        self.sandboxed = sandbox_available()
        if not self.sandboxed and not allow_unsandboxed:
            raise SandboxUnavailable(
                "bubblewrap (bwrap) is missing or not functional, so jobs cannot be isolated; "
                "install the 'bubblewrap' package, or pass allow_unsandboxed=True to run "
                "strangers' programs without OS isolation"
            )
        self.device = device
        self.threads = threads
        self.scratch_root = Path(scratch_root or Path(tempfile.gettempdir()) / "mesh-jobs")
        self.scratch_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.warm = warm
        self._next: _JobProcess | None = None
        self._lock = threading.Lock()
        _sweep_orphans(self.scratch_root)
        # A runner dropped without close() still stops its waiting process at exit / GC.
        self._finalizer = weakref.finalize(self, JobRunner._discard_next, [None])
        if warm:
            self._set_next(self._start())

    def _set_next(self, job: _JobProcess | None) -> None:
        self._next = job
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, JobRunner._discard_next, [job])

    @staticmethod
    def _discard_next(holder: list[_JobProcess | None]) -> None:
        if holder[0] is not None:
            holder[0].discard()

    def _start(self) -> _JobProcess:
        folder = self.scratch_root / f"job-{os.getpid()}-{uuid.uuid4().hex}"
        folder.mkdir(mode=0o700)
        return _JobProcess(folder, device=self.device, threads=self.threads,
                           sandboxed=self.sandboxed)

    def run(
        self,
        program: bytes | Path,
        inputs: bytes | Path,
        *,
        time_limit_s: float,
        memory_limit_mb: int,
        max_output_bytes: int,
    ) -> JobOutcome:
        """Run one job; see :func:`run_job`."""
        started = time.perf_counter()
        with self._lock:
            try:
                program_bytes = _read(program, "program")
                validate_program(program_bytes)
            except BadInput as exc:
                return _failed(f"program refused: {exc}", started)
            try:
                input_bytes = _read(inputs, "inputs")
                read_header(input_bytes, "args")
            except BadInput as exc:
                return _failed(f"inputs refused: {exc}", started)
            job = self._next if self._next is not None and self._next.process.poll() is None \
                else self._start()
            self._set_next(None)
            try:
                return self._run_in(job, program_bytes, input_bytes, started,
                                    time_limit_s=time_limit_s, memory_limit_mb=memory_limit_mb,
                                    max_output_bytes=max_output_bytes)
            finally:
                job.discard()
                if self.warm:
                    self._set_next(self._start())

    def _run_in(self, job: _JobProcess, program: bytes, inputs: bytes, started: float, *,
                time_limit_s: float, memory_limit_mb: int, max_output_bytes: int) -> JobOutcome:
        (job.box / "program.pt2").write_bytes(program)
        (job.box / "inputs.safetensors").write_bytes(inputs)
        (job.box / "job.json").write_text(json.dumps({
            "device": self.device, "memory_limit_mb": int(memory_limit_mb),
            "max_output_bytes": int(max_output_bytes), "threads": self.threads,
        }))
        try:
            job.go()
        except (BrokenPipeError, OSError):
            pass  # it died while waiting; reported below
        remaining = max(0.0, time_limit_s - (time.perf_counter() - started))
        if not job.wait(remaining):
            return _failed(f"job ran past its time limit of {time_limit_s:g} s and was killed",
                           started)
        result = _read_result(job.box / "result.json")
        if result is None:
            code = job.process.returncode
            how = (f"was killed by signal {signal.Signals(-code).name}" if code and code < 0
                   else f"exited with status {code}")
            tail = job.stderr_tail().splitlines()[-1:] or [""]
            return _failed(f"job process {how} without a result (crash, or over its memory "
                           f"limit of {memory_limit_mb} MB) {tail[0][:300]}".rstrip(), started)
        compute_s = float(result.get("compute_s") or 0.0)
        if not result.get("ok"):
            return _failed(str(result.get("reason") or "job failed")[:2000], started, compute_s)
        output_path = job.box / "output.safetensors"
        try:
            size = output_path.stat().st_size
        except OSError:
            return _failed("job reported success but wrote no output", started, compute_s)
        if size > max_output_bytes:
            return _failed(f"output is {size} bytes, over the job's limit of {max_output_bytes} "
                           "bytes", started, compute_s)
        output = output_path.read_bytes()
        try:
            read_header(output, "out")
        except BadInput as exc:
            return _failed(f"job wrote a malformed output: {exc}", started, compute_s)
        return JobOutcome(ok=True, output=output, output_sha256=hashlib.sha256(output).hexdigest(),
                          reason=None, wall_s=time.perf_counter() - started, compute_s=compute_s)

    def close(self) -> None:
        with self._lock:
            if self._next is not None:
                self._next.discard()
            self._set_next(None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def run_job(
    program: bytes | Path,
    inputs: bytes | Path,
    *,
    device: str = "cpu",
    time_limit_s: float,
    memory_limit_mb: int,
    max_output_bytes: int,
    threads: int,
    scratch_root: Path | None = None,
    allow_unsandboxed: bool = False,
) -> JobOutcome:
    """Run one job (a ``.pt2`` program and ``args.N`` safetensors inputs) in a fresh sandbox.

    Every failure of the job itself (refused or unloadable program, wrong inputs, time, memory
    or output limit, a crash) comes back as ``JobOutcome(ok=False, reason=...)``; nothing from
    the job's files runs in this process. Raises :class:`SandboxUnavailable` when bubblewrap
    cannot isolate the job and ``allow_unsandboxed`` is False, and :class:`BadInput` for a bad
    ``device`` or ``threads``.
    """
    runner = JobRunner(device=device, threads=threads, scratch_root=scratch_root,
                       allow_unsandboxed=allow_unsandboxed, warm=False)
    try:
        return runner.run(program, inputs, time_limit_s=time_limit_s,
                          memory_limit_mb=memory_limit_mb, max_output_bytes=max_output_bytes)
    finally:
        runner.close()


def _sweep_orphans(scratch_root: Path) -> None:
    """Remove job folders left by worker processes that no longer exist (killed mid-job)."""
    for folder in scratch_root.glob("job-*"):
        parts = folder.name.split("-")
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def _read(source: bytes | Path, what: str) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise BadInput(f"{what} file cannot be read: {exc}") from None


def _read_result(path: Path) -> dict[str, object] | None:
    try:
        if path.stat().st_size > _RESULT_LIMIT:
            return {"ok": False, "reason": "job wrote an oversized result file"}
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
