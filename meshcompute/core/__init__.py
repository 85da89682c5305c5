"""The pure domain core: job states, payout math, matching, tolerance comparison, economics.

Nothing in this package performs I/O or imports web3, redis, celery or torch; adapters around
it do. ``tests/unit/test_core_boundary.py`` checks the import boundary.
"""
