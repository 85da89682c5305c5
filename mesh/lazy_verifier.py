"""TEST-ONLY: a lazy verifier, for end-to-end tests of the canary jobs that catch it.

``mesh verifier start`` runs :class:`LazyAuditor` instead of the real auditor when
``MESH_TEST_LAZY_VERIFIER=1``, and only on the development chain (:func:`lazy_verifier_from_env`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from meshcompute.core.job import JobRecord
from meshcompute.core.spec import JobSpec
from meshcompute.mesh.adversary import require_dev_chain
from meshcompute.verifier.audit import Auditor, VerdictReady
from meshcompute.verifier.evidence import AUDIT

ENV_LAZY_VERIFIER = "MESH_TEST_LAZY_VERIFIER"


class LazyAuditor(Auditor):
    """Passes every drawn audit without recomputing, naming the worker's committed output as its
    own (so its evidence looks complete). It saves one job's compute per audit; the canary
    runner (``meshcompute.verifier.canary``) is what makes that cost its bond. Appeals and
    disputes it judges honestly (the base class)."""

    def audit(self, job_id: int, record: JobRecord, *,
              missing_output_is_final: bool) -> VerdictReady:
        worker_sha = bytes(record.result_hash).hex()
        spec = JobSpec.from_bytes(self.store.get_blob(record.spec_hash.hex()))
        return self._finish(job_id, AUDIT, record.spec_hash.hex(), dict(spec.tolerance),
                            (worker_sha, worker_sha), True, ())


def lazy_verifier_from_env(chain_id: int, env: Mapping[str, str] | None = None) -> bool:
    """Whether ``MESH_TEST_LAZY_VERIFIER`` asks for :class:`LazyAuditor`; refuses
    (ConfigError) on any chain but the development chain."""
    env = os.environ if env is None else env
    if env.get(ENV_LAZY_VERIFIER, "").strip() not in ("1", "true", "yes"):
        return False
    require_dev_chain(ENV_LAZY_VERIFIER, chain_id)
    return True
