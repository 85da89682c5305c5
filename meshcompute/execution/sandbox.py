"""Run one job from a stranger: validate in this process, execute in a bubblewrap sandbox.

Public interface (the worker node and the verifier's recomputation call these):

- :func:`run_job` -> :class:`JobOutcome`: one job, in a fresh sandboxed process.
- :class:`JobRunner`: the same, reusable, with an optional warm start (the next job process is
  started, and has imported torch, while the caller is busy with the previous result), and
  :meth:`JobRunner.run_batch`: the jobs of one lease batch (several jobs of ONE client and ONE
  program, :mod:`meshcompute.core.batching`) in one process (the program loaded once), which
  may stay bound to that client and program for its next lease batch.
- :func:`sandbox_available`, :class:`~meshcompute.errors.SandboxUnavailable`,
  :func:`build_command` (the exact bwrap command; tests use it to probe the isolation).

This process never imports torch and never loads the program: it checks the archive with
:func:`meshcompute.execution.archive.validate_program` and the tensor files' headers, writes
them into a fresh per-job scratch folder and starts ``python -m meshcompute.execution.execute``
under bubblewrap with: all namespaces unshared (no network, own pid/ipc/uts, a user namespace
mapping the job to ``nobody`` where the kernel allows it), all capabilities dropped,
``--die-with-parent``, ``--new-session``; read-only binds of only ``/usr`` (and ``/lib*``,
``/bin`` as the host has them), a new ``/proc``, a minimal ``/dev`` (plus ``/dev/nvidia*`` for
CUDA jobs), a private ``/tmp``, then the Python installation, the virtual environment and this
project's ``meshcompute`` package (bound after ``/tmp``, so they may live under it); and the
job's scratch folder as the only writable bind, at ``/job``. The home folder, ``~/.mesh``
(keystore, blobs) and other jobs' folders are not mounted.

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
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from meshcompute.errors import BadInput, SandboxUnavailable
from meshcompute.execution.archive import validate_program
from meshcompute.execution.tensorfile import read_header

PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The ``meshcompute`` package folder: the only project code a job process needs (bound
read-only; its parent is the job's ``PYTHONPATH``)."""
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
    roots.add(PACKAGE_DIR)
    home = Path.home().resolve()
    for root in roots:
        if root == home or root in home.parents or root == Path("/"):
            raise SandboxUnavailable(f"refusing to expose {root} to jobs (it is, or contains, "
                                     "the home folder); install Python and the worker elsewhere")
    return sorted(r for r in roots if not str(r).startswith("/usr/"))


def _nvidia_devices() -> list[str]:
    return sorted(str(p) for p in Path("/dev").glob("nvidia*"))


#: The NVIDIA driver's user-space library that every CUDA program loads first.
_DRIVER_LIBRARY = "libcuda.so.1"


@functools.cache
def cuda_driver_dirs() -> tuple[str, ...]:
    """Folders outside ``/usr`` that hold the NVIDIA driver's user-space libraries, as this
    machine's loader finds them: a driver mounted into a container or a VM often lives in its
    own folder (``/usr/local/nvidia/lib64``), reached through ``LD_LIBRARY_PATH`` or the loader
    cache. A CUDA job gets these bound read-only and on its ``LD_LIBRARY_PATH``; without them the
    job's torch finds no driver. Empty where the driver is under ``/usr`` or absent."""
    found: list[str] = []
    searched = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    for folder in searched:
        if (Path(folder) / _DRIVER_LIBRARY).exists():
            found.append(folder)
    found += _loader_cache_dirs(_DRIVER_LIBRARY)
    dirs: list[str] = []
    for folder in found:
        real = Path(folder).resolve()
        if not real.is_dir() or real == Path("/usr") or Path("/usr") in real.parents:
            continue  # the sandbox binds /usr, and /lib* as the host has them
        for path in (str(Path(folder)), str(real)):
            if path not in dirs:
                dirs.append(path)
    return tuple(dirs)


def _loader_cache_dirs(library: str) -> list[str]:
    """The folders the loader cache (``ldconfig -p``) names for ``library``."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        listed = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10,
                                check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    dirs = []
    for line in listed.splitlines():
        name, _, target = line.strip().partition(" => ")
        if name.split(" ", 1)[0] == library and target:
            dirs.append(str(Path(target).parent))
    return dirs


def build_command(box: Path, argv: list[str], *, device: str = "cpu", threads: int = 1,
                  cpu_capability: str | None = None,
                  onednn_max_isa: str | None = None) -> list[str]:
    """The bwrap command that runs ``argv`` (a command inside the sandbox) with ``box`` as the
    only writable folder, mounted at ``/job`` (the working directory)."""
    flags = _bwrap_flags()
    if flags is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is missing or cannot create namespaces "
                                 "here; install the Debian package 'bubblewrap'")
    # The private /tmp is mounted before the interpreter's and the project's folders are bound:
    # bubblewrap applies mounts in order, so a later tmpfs would hide a checkout or virtual
    # environment that lives under /tmp.
    command = ["bwrap", *flags, *_system_binds(), "--proc", "/proc", "--dev", "/dev",
               "--tmpfs", "/tmp"]
    for root in _python_roots():
        command += ["--ro-bind", str(root), str(root)]
    if device == "cuda":
        for node in _nvidia_devices():
            command += ["--dev-bind", node, node]
        command += ["--ro-bind-try", "/sys", "/sys"]
        for folder in cuda_driver_dirs():
            command += ["--ro-bind", folder, folder]
    command += ["--bind", str(box), SANDBOX_DIR, "--chdir", SANDBOX_DIR, "--clearenv"]
    for key, value in _job_env(threads, SANDBOX_DIR, cpu_capability, onednn_max_isa,
                               device).items():
        command += ["--setenv", key, value]
    return [*command, "--", *argv]


#: Values of torch's ``ATEN_CPU_CAPABILITY`` (the widest vector instructions its kernels use).
CPU_CAPABILITIES = ("default", "avx2", "avx512")

#: Values of oneDNN's ``ONEDNN_MAX_CPU_ISA`` (the widest instruction set its kernels may use,
#: oneDNN's names; ``SSE41`` is the oldest x86 set it supports, ``ALL`` the default).
ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
               "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_AMX",
               "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "ALL")


def _job_env(threads: int, home: str, cpu_capability: str | None = None,
             onednn_max_isa: str | None = None, device: str = "cpu") -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "PYTHONPATH": str(PACKAGE_DIR.parent),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONHASHSEED": "0",
        "LANG": "C.UTF-8",
        # the sandbox has no /etc/passwd: name the user, or getpass.getuser() (torch's CUDA
        # start-up asks for it) fails with "getpwuid(): uid not found"
        "USER": "nobody",
        "LOGNAME": "nobody",
    }
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[key] = str(threads)
    if cpu_capability is not None:
        env["ATEN_CPU_CAPABILITY"] = cpu_capability
    if onednn_max_isa is not None:
        env["ONEDNN_MAX_CPU_ISA"] = onednn_max_isa
    if device == "cuda" and cuda_driver_dirs():
        env["LD_LIBRARY_PATH"] = ":".join(cuda_driver_dirs())
    return env


class _JobProcess:
    """One started job process (sandboxed or not) waiting for batches (``--serve`` mode)."""

    def __init__(self, folder: Path, *, device: str, threads: int, sandboxed: bool,
                 cpu_capability: str | None = None,
                 onednn_max_isa: str | None = None) -> None:
        self.folder = folder
        self.box = folder / "box"
        self.box.mkdir(parents=True)
        argv = [sys.executable, "-m", "meshcompute.execution.execute", "--serve"]
        self.stderr = (folder / "stderr.log").open("wb")
        if sandboxed:
            command = build_command(self.box, [*argv, SANDBOX_DIR], device=device,
                                    threads=threads, cpu_capability=cpu_capability,
                                    onednn_max_isa=onednn_max_isa)
            env = None
            cwd = None
        else:
            command = [*argv, str(self.box)]
            env = _job_env(threads, str(self.box), cpu_capability, onednn_max_isa, device)
            cwd = self.box
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            start_new_session=True, env=env, cwd=cwd, close_fds=True,
        )
        self.key: tuple[object, ...] | None = None
        """The (client, program, limits) this process is bound to after its first batch."""
        self.jobs_run = 0
        self.batches = 0
        self.spare = False
        """Started ahead of any batch (the warm spare): if it dies before its first result, that
        says nothing about the job given to it (the process may have been killed while it
        waited), so the batch is run again in a process started for it."""
        self._buffer = b""

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, name: str) -> bool:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(name.encode() + b"\n")
            self.process.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False  # it died while waiting; reported by the caller

    def read_line(self, deadline: float) -> str | None:
        """The next line the process prints; None at end of output or past ``deadline``
        (``time.perf_counter()``)."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self._buffer += chunk
            if len(self._buffer) > _RESULT_LIMIT:
                return None  # not the protocol: treat as dead
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode("ascii", "replace").strip()

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
            with contextlib.suppress(OSError):
                if self.process.stdin:
                    self.process.stdin.close()  # end of batches: it exits by itself
            if not self.wait(0.5):
                self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                if stream:
                    stream.close()
        self.stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class _BatchJob:
    index: int
    inputs: bytes
    time_limit_s: float


class JobRunner:
    """Runs jobs and batches of jobs one after another with fixed device and thread count.

    :meth:`run` runs one job in a fresh process. :meth:`run_batch` runs several jobs of ONE
    client and ONE program in one process (the program validated and loaded once, each job's
    inputs in turn, each output written, size-checked and hashed on its own); with a
    ``reuse_key`` (the client's address) the process stays bound to that (client, program,
    limits) and takes that key's next batch, never another's. A process is only ever given
    jobs of one client and one program hash: that is the security rule that makes sharing a
    process acceptable (nothing one client's job leaves behind can reach another client).

    With ``warm=True`` a spare (unbound) process is kept started, so its interpreter start and
    torch import overlap with whatever the caller does between jobs, and a batch of another
    client or program does not wait for one. Not thread-safe: use one runner per concurrent job slot. ``close()`` stops the
    waiting processes.
    """

    def __init__(
        self,
        *,
        device: str = "cpu",
        threads: int = 1,
        scratch_root: Path | None = None,
        allow_unsandboxed: bool = False,
        warm: bool = False,
        max_kept: int = 2,
        cpu_capability: str | None = None,
        onednn_max_isa: str | None = None,
    ) -> None:
        if device not in ("cpu", "cuda"):
            raise BadInput(f"device must be 'cpu' or 'cuda', got {device!r}")
        if cpu_capability is not None and cpu_capability not in CPU_CAPABILITIES:
            raise BadInput(f"cpu_capability must be one of {CPU_CAPABILITIES}, "
                           f"got {cpu_capability!r}")
        if onednn_max_isa is not None and onednn_max_isa not in ONEDNN_ISAS:
            raise BadInput(f"onednn_max_isa must be one of {ONEDNN_ISAS}, "
                           f"got {onednn_max_isa!r}")
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
        self.cpu_capability = cpu_capability
        """torch's ``ATEN_CPU_CAPABILITY`` in the job processes (None: what the CPU offers)."""
        self.onednn_max_isa = onednn_max_isa
        """oneDNN's ``ONEDNN_MAX_CPU_ISA`` in the job processes (None: what the CPU offers)."""
        self.scratch_root = Path(scratch_root or Path(tempfile.gettempdir()) / "mesh-jobs")
        self.scratch_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.warm = warm
        self.max_kept = max(0, int(max_kept))
        """How many processes bound to a (client, program) are kept for their next batch."""
        self._next: _JobProcess | None = None
        self._kept: OrderedDict[tuple[object, ...], _JobProcess] = OrderedDict()
        """Processes bound to a (client, program, limits) key, least recently used first."""
        self._lock = threading.Lock()
        self._holder: list[_JobProcess | None] = [None]
        _sweep_orphans(self.scratch_root)
        # A runner dropped without close() still stops its waiting processes at exit / GC.
        self._finalizer = weakref.finalize(self, JobRunner._discard_all, self._holder)
        if warm:
            self._set_next(self._start())

    def _set_next(self, job: _JobProcess | None) -> None:
        if job is not None:
            job.spare = True
        self._next = job
        self._holder[0] = job

    def _sync_holder(self) -> None:
        self._holder[1:] = list(self._kept.values())

    def _keep(self, job: _JobProcess) -> None:
        """Keep ``job`` (bound to ``job.key``) for that key's next batch; the least recently
        used kept process goes when more than ``max_kept`` are kept."""
        assert job.key is not None
        self._kept[job.key] = job
        self._kept.move_to_end(job.key)
        while len(self._kept) > self.max_kept:
            _, old = self._kept.popitem(last=False)
            old.discard()
        self._sync_holder()

    @property
    def _bound(self) -> _JobProcess | None:
        """The most recently used kept process (tests look at it)."""
        return next(reversed(self._kept.values())) if self._kept else None

    @staticmethod
    def _discard_all(holder: list[_JobProcess | None]) -> None:
        for job in holder:
            if job is not None:
                job.discard()

    def _start(self) -> _JobProcess:
        folder = self.scratch_root / f"job-{os.getpid()}-{uuid.uuid4().hex}"
        folder.mkdir(mode=0o700)
        return _JobProcess(folder, device=self.device, threads=self.threads,
                           sandboxed=self.sandboxed, cpu_capability=self.cpu_capability,
                           onednn_max_isa=self.onednn_max_isa)

    def run(
        self,
        program: bytes | Path,
        inputs: bytes | Path,
        *,
        time_limit_s: float,
        memory_limit_mb: int,
        max_output_bytes: int,
    ) -> JobOutcome:
        """Run one job in a fresh process; see :func:`run_job`."""
        return self.run_batch(program, [inputs], time_limit_s=time_limit_s,
                              memory_limit_mb=memory_limit_mb,
                              max_output_bytes=max_output_bytes)[0]

    def run_batch(
        self,
        program: bytes | Path,
        inputs: Sequence[bytes | Path],
        *,
        time_limit_s: float | Sequence[float],
        memory_limit_mb: int,
        max_output_bytes: int,
        reuse_key: str | None = None,
    ) -> list[JobOutcome]:
        """Run the jobs ``inputs[i]`` of one program in one sandboxed process; one outcome per
        job, in order.

        Every job keeps the checks of :func:`run_job`: the program is validated once, each
        input's header on its own; ``time_limit_s`` (one value, or one per job) applies to each
        job from the moment the previous one finished (the first job's time includes loading
        the program), and a job past it is killed with its process and reported failed, the
        jobs after it going on in a fresh process; ``memory_limit_mb`` and
        ``max_output_bytes`` apply to each job. A job whose process crashed or ran out of
        memory after earlier jobs ran in it is run again, first in a fresh process, before it
        is reported failed.

        ``reuse_key`` (the jobs' client): keep the process for the next batch with the same
        key, program and limits. Callers must only pass jobs of ONE client and ONE program
        per call, and the client's identity as the key.
        """
        started = time.perf_counter()
        limits = ([float(time_limit_s)] * len(inputs) if isinstance(time_limit_s, int | float)
                  else [float(t) for t in time_limit_s])
        if len(limits) != len(inputs):
            raise BadInput(f"{len(limits)} time limits for {len(inputs)} jobs")
        if not inputs:
            return []
        outcomes: list[JobOutcome | None] = [None] * len(inputs)
        with self._lock:
            try:
                program_bytes = _read(program, "program")
                validate_program(program_bytes)
            except BadInput as exc:
                return [_failed(f"program refused: {exc}", started) for _ in inputs]
            pending: list[_BatchJob] = []
            for index, source in enumerate(inputs):
                try:
                    data = _read(source, "inputs")
                    read_header(data, "args")
                except BadInput as exc:
                    outcomes[index] = _failed(f"inputs refused: {exc}", started)
                    continue
                pending.append(_BatchJob(index, data, limits[index]))
            sha = hashlib.sha256(program_bytes).hexdigest()
            key = (None if reuse_key is None
                   else (reuse_key.lower(), sha, int(memory_limit_mb), int(max_output_bytes)))
            fresh = False
            while pending:
                job = self._process_for(key, fresh=fresh)
                keep = False
                try:
                    pending, keep = self._run_in(
                        job, program_bytes, sha, pending, outcomes, started,
                        memory_limit_mb=memory_limit_mb, max_output_bytes=max_output_bytes)
                finally:
                    if key is not None and keep and job.alive():
                        job.key = key
                        self._keep(job)
                    else:
                        job.discard()
                fresh = True
            if self.warm and self._next is None:
                self._set_next(self._start())
        return [o if o is not None else _failed("job was not run", started) for o in outcomes]

    def bound_client(self) -> str | None:
        """The client of this runner's most recently used kept process, if it keeps one."""
        bound = self._bound
        return str(bound.key[0]) if bound is not None and bound.key is not None else None

    def bound_clients(self) -> set[str]:
        """The clients this runner keeps processes for."""
        return {str(key[0]) for key in self._kept}

    def _process_for(self, key: tuple[object, ...] | None, *, fresh: bool) -> _JobProcess:
        """The kept process for ``key`` when there is one (and ``fresh`` is not asked), else
        the warm spare, else a new process. A process leaves the kept set while it runs."""
        if key is not None and key in self._kept:
            bound = self._kept.pop(key)
            self._sync_holder()
            if not fresh and bound.alive():
                return bound
            bound.discard()
        job = self._next if self._next is not None and self._next.alive() else None
        if job is None and self._next is not None:
            self._next.discard()
        self._set_next(None)
        return job if job is not None else self._start()

    def _run_in(self, job: _JobProcess, program: bytes, sha: str, pending: list[_BatchJob],
                outcomes: list[JobOutcome | None], started: float, *, memory_limit_mb: int,
                max_output_bytes: int) -> tuple[list[_BatchJob], bool]:
        """Run ``pending`` in ``job``; fill ``outcomes``; return (jobs to run again in a fresh
        process, whether ``job`` may take another batch)."""
        job.batches += 1
        name = f"b{job.batches}"
        folder = job.box / name
        folder.mkdir()
        (folder / "program.pt2").write_bytes(program)
        for position, item in enumerate(pending):
            (folder / f"inputs.{position}.safetensors").write_bytes(item.inputs)
        (folder / "batch.json").write_text(json.dumps({
            "device": self.device, "memory_limit_mb": int(memory_limit_mb),
            "max_output_bytes": int(max_output_bytes), "threads": self.threads,
            "program_sha256": sha, "count": len(pending),
        }))
        # a crash with no result is the job's only in a process started for it
        first_in_process = job.jobs_run == 0 and not job.spare
        sent = job.send(name)
        position = 0
        job_started = time.perf_counter()
        finished = False
        timed_out = False
        while sent and position < len(pending):
            deadline = job_started + pending[position].time_limit_s
            line = job.read_line(deadline)
            if line is None:
                timed_out = job.alive() and time.perf_counter() >= deadline
                break
            if line == f"job {position}":
                job_started = time.perf_counter()
                position += 1
            elif line == "end":
                break
        if sent and position == len(pending):
            finished = job.read_line(time.perf_counter() + 10) == "end"
        keep = False
        if finished:
            summary = _read_result(folder / "result.json") or {}
            keep = bool(summary.get("reusable"))
        else:
            job.kill()
        rerun: list[_BatchJob] = []
        for done, item in enumerate(pending):
            result = _read_result(folder / f"result.{done}.json") if done < position else None
            if result is None:
                if done == position and timed_out:
                    limit = item.time_limit_s
                    outcomes[item.index] = _failed(
                        f"job ran past its time limit of {limit:g} s and was killed", started)
                elif done == position and first_in_process and done == 0:
                    outcomes[item.index] = self._crashed(job, memory_limit_mb, started)
                else:
                    rerun.append(item)
                continue
            if result.get("retry") and not (first_in_process and done == 0):
                rerun.append(item)
                continue
            outcomes[item.index] = _outcome(folder, done, result, started, max_output_bytes)
        job.jobs_run += position
        shutil.rmtree(folder, ignore_errors=True)
        if rerun and len(rerun) == len(pending) and first_in_process:
            # nothing ran in a brand-new process: do not loop; report the first job
            outcomes[rerun[0].index] = self._crashed(job, memory_limit_mb, started)
            rerun = rerun[1:]
        return rerun, keep and not rerun

    @staticmethod
    def _crashed(job: _JobProcess, memory_limit_mb: int, started: float) -> JobOutcome:
        code = job.process.returncode
        how = (f"was killed by signal {signal.Signals(-code).name}" if code and code < 0
               else f"exited with status {code}")
        tail = job.stderr_tail().splitlines()[-1:] or [""]
        return _failed(f"job process {how} without a result (crash, or over its memory "
                       f"limit of {memory_limit_mb} MB) {tail[0][:300]}".rstrip(), started)

    def close(self) -> None:
        with self._lock:
            for job in (self._next, *self._kept.values()):
                if job is not None:
                    job.discard()
            self._set_next(None)
            self._kept.clear()
            self._sync_holder()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _outcome(folder: Path, index: int, result: dict[str, object], started: float,
             max_output_bytes: int) -> JobOutcome:
    compute_s = float(result.get("compute_s") or 0.0)  # type: ignore[arg-type]
    if not result.get("ok"):
        return _failed(str(result.get("reason") or "job failed")[:2000], started, compute_s)
    output_path = folder / f"output.{index}.safetensors"
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
