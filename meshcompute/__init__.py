"""meshcompute: a verified compute marketplace for PyTorch jobs.

``from meshcompute import Client`` gives the client SDK (:mod:`meshcompute.client`); it is
imported lazily so that ``import meshcompute`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from meshcompute.client import Client

        return Client
    raise AttributeError(f"module 'meshcompute' has no attribute {name!r}")
