"""What this machine offers: cores, memory, CUDA devices, torch version.

The result is the ``hardware`` object a worker registers with the market
(docs/market-api.md ``POST /workers``). Limits imposed by a container (cgroup v2 ``cpu.max``
and ``memory.max``) count: a worker in a 2-CPU container on a 64-core host offers 2 cores.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from meshcompute.wire.market_client import Gpu, Hardware

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def detect_hardware(*, with_cuda: bool = True) -> Hardware:
    """The hardware of this machine; ``with_cuda=False`` skips the CUDA probe (CPU-only)."""
    import torch

    gpus: tuple[Gpu, ...] = ()
    if with_cuda:
        gpus = cuda_devices()
    return Hardware(
        device="cuda" if gpus else "cpu",
        cores=cpu_cores(),
        memory_mb=memory_mb(),
        gpus=gpus,
        torch=str(torch.__version__),
    )


def cuda_devices() -> tuple[Gpu, ...]:
    """Name and total memory of every CUDA device torch can use (empty without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return ()
    out = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        out.append(Gpu(name=str(props.name), memory_mb=int(props.total_memory) // (1 << 20)))
    return tuple(out)


def cpu_cores(cgroup_root: Path = _CGROUP_ROOT) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def memory_mb(cgroup_root: Path = _CGROUP_ROOT) -> int:
    """Physical memory in MiB, capped by a cgroup v2 memory limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_memory_limit(cgroup_root)
    if limit is not None:
        total = min(total, limit)
    return int(total) // (1 << 20)


def _cgroup_cpu_quota(root: Path) -> float | None:
    """``cpu.max`` as a number of CPUs (``"max 100000"`` means no quota)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def _cgroup_memory_limit(root: Path) -> int | None:
    try:
        value = (root / "memory.max").read_text().strip()
    except OSError:
        return None
    if value == "max":
        return None
    try:
        return int(value)
    except ValueError:
        return None
