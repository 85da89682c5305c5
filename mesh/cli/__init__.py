"""The ``mesh`` CLI (see :mod:`meshcompute.mesh.cli.main`)."""

from meshcompute.mesh.cli.main import app, main

__all__ = ["app", "main"]
