"""A cheating worker's output must end in a failed audit, whatever its bytes: dtypes numpy
cannot hold, safetensors dtypes torch cannot map, and outputs over the job's size limit."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from meshcompute.core.spec import JobSpec
from meshcompute.verifier.journal import Journal
from meshcompute.verifier.outputs import compare_outputs
from tests.verifier.test_service_unit import TRUTH, MemoryStore, auditor, outputs, record

POLICY = {"kind": "allclose", "rtol": 1e-4, "atol": 1e-5}


def _job(store: MemoryStore, **limits) -> bytes:
    spec = JobSpec(program=store.put_blob(b"program"), inputs=store.put_blob(b"inputs"),
                   tolerance=POLICY, **limits)
    return bytes.fromhex(store.put_blob(spec.canonical_bytes()))


def _audit(tmp_path: Path, worker_output: bytes, **limits):
    store = MemoryStore()
    spec_hash = _job(store, **limits)
    worker_sha = store.put_blob(worker_output)
    a = auditor(store, Journal(tmp_path / "j.json"), TRUTH)
    return a.audit(1, record(spec_hash, bytes.fromhex(worker_sha)),
                   missing_output_is_final=False)


def _raw_safetensors(dtype: str, shape: list[int], data: bytes) -> bytes:
    header = json.dumps({"out.0": {"dtype": dtype, "shape": shape,
                                   "data_offsets": [0, len(data)]}}).encode()
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2,
                                   torch.float8_e4m3fnuz])
def test_float8_output_fails_the_audit(tmp_path: Path, dtype: torch.dtype) -> None:
    """numpy has no float8: reading it used to raise TypeError, so no verdict was ever
    posted and the junk was paid when the audit window closed."""
    junk = save({"out.0": torch.zeros(3, 4, dtype=dtype)})
    ready = _audit(tmp_path, junk)
    assert ready.verdict is False
    assert "dtype" in ready.evidence.comparisons[0].reason


def test_dtype_torch_cannot_map_fails_the_audit(tmp_path: Path) -> None:
    junk = _raw_safetensors("F8_E8M0", [3, 4], bytes(12))
    ready = _audit(tmp_path, junk)
    assert ready.verdict is False
    reason = ready.evidence.comparisons[0].reason
    assert "F8_E8M0" in reason and ("not readable" in reason or "not a valid" in reason)


def test_output_over_the_jobs_limit_fails_unread(tmp_path: Path) -> None:
    big = outputs(torch.zeros(64, 64))
    ready = _audit(tmp_path, big, max_output_bytes=len(big) - 1)
    assert ready.verdict is False
    assert "over the job's max_output_bytes" in ready.evidence.comparisons[0].reason


def test_float8_outputs_compare_by_value() -> None:
    """A job whose own output is float8 can still be judged (widened exactly to float32)."""
    ones = save({"out.0": torch.ones(2, 2, dtype=torch.float8_e4m3fn)})
    zeros = save({"out.0": torch.zeros(2, 2, dtype=torch.float8_e4m3fn)})
    assert compare_outputs(ones, ones, POLICY).agree
    assert not compare_outputs(ones, zeros, POLICY).agree
