"""The provider's worker: runs strangers' PyTorch jobs safely.

Job execution (what the node loop and the verifier's recomputation call):

- ``meshcompute.execution.sandbox.run_job(program, inputs, *, device="cpu", time_limit_s, memory_limit_mb,
  max_output_bytes, threads, scratch_root=None, allow_unsandboxed=False) -> JobOutcome``
- ``meshcompute.execution.sandbox.JobRunner`` (same, reusable, optional warm start), ``sandbox_available()``
- ``meshcompute.execution.archive.validate_program`` (strict ``.pt2`` schema), ``meshcompute.execution.loader.load_program``
  (pickle-free loading, used inside the sandboxed ``meshcompute.execution.execute`` process)
"""
