"""Contract tests run on one anvil with the marketplace deployed once per module; each test
starts from a snapshot and is reverted afterwards (the ``world`` fixture of tests/conftest.py)."""
