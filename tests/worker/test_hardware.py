"""worker.hardware: the registration payload, and cgroup limits counted."""

from __future__ import annotations

import os

import torch

from meshcompute.wire.market_client import Hardware
from meshcompute.worker.hardware import cpu_cores, cuda_devices, detect_hardware, memory_mb


def test_detect_hardware_matches_this_machine_and_round_trips():
    hw = detect_hardware()
    assert hw.cores == cpu_cores() and 1 <= hw.cores <= (os.cpu_count() or 1)
    assert 0 < hw.memory_mb <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20
    assert hw.torch == torch.__version__
    assert hw.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert len(hw.gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    payload = hw.to_json()
    assert set(payload) == {"device", "cores", "memory_mb", "gpus", "torch"}
    assert Hardware.from_json(payload) == hw


def test_cuda_devices_report_name_and_memory():
    gpus = cuda_devices()
    if not torch.cuda.is_available():
        assert gpus == ()
        return
    for index, gpu in enumerate(gpus):
        props = torch.cuda.get_device_properties(index)
        assert gpu.name == props.name and gpu.memory_mb == props.total_memory >> 20


def test_without_cuda_probe_device_is_cpu():
    hw = detect_hardware(with_cuda=False)
    assert hw.device == "cpu" and hw.gpus == ()


def test_cgroup_cpu_quota_caps_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs -> 2
    assert cpu_cores(tmp_path) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU still counts as one
    assert cpu_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_cores(tmp_path) == len(os.sched_getaffinity(0))


def test_cgroup_memory_limit_caps_memory(tmp_path):
    physical = memory_mb(tmp_path)  # no memory.max here: the machine's memory
    (tmp_path / "memory.max").write_text(str(512 * 2**20))
    assert memory_mb(tmp_path) == min(512, physical)
    (tmp_path / "memory.max").write_text("max")
    assert memory_mb(tmp_path) == physical
    (tmp_path / "memory.max").write_text("garbage")
    assert memory_mb(tmp_path) == physical
