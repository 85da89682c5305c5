"""The ``mesh`` CLI (see :mod:`meshcompute.cli.main`)."""

from meshcompute.cli.main import app, main

__all__ = ["app", "main"]
