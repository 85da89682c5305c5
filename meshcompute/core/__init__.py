"""The pure domain core: job states, payout math, matching, lease batches, the off-chain lease
lifecycle and verdict windows, tolerance comparison, audit draw and rate, settlement rules,
economics.

Nothing in this package performs I/O or imports web3, redis, celery or torch; adapters around
it do. The import-linter contracts in ``pyproject.toml`` (``tools/lint_imports.py``) and
``tests/unit/test_core.py`` check the boundary.
"""
