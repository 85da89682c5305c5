"""Read the compiled contract artifacts shipped inside the meshcompute package.

    from meshcompute.chain.artifacts import load_artifact
    art = load_artifact("MeshCredit")
    contract = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])

The files live in ``meshcompute/artifacts/<ContractName>.json`` and are produced by
``python -m meshcompute.chain.compile`` (see :mod:`meshcompute.chain.compile`). Reading
them needs neither node nor a compiler.
"""

from __future__ import annotations

import copy
import json
from functools import cache, lru_cache
from importlib import resources
from typing import Any

__all__ = ["ArtifactNotFoundError", "available_artifacts", "load_artifact"]

_PACKAGE = "meshcompute"
_SUBDIR = "artifacts"


class ArtifactNotFoundError(LookupError):
    """No compiled artifact exists for the requested contract name."""


def _artifact_dir():
    return resources.files(_PACKAGE).joinpath(_SUBDIR)


@lru_cache(maxsize=1)
def available_artifacts() -> tuple[str, ...]:
    """Names of the contracts that have an artifact, sorted."""
    try:
        entries = list(_artifact_dir().iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return ()
    return tuple(sorted(e.name[: -len(".json")] for e in entries if e.name.endswith(".json")))


@cache
def _load(name: str) -> dict[str, Any]:
    resource = _artifact_dir().joinpath(f"{name}.json")
    try:
        text = resource.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        have = ", ".join(available_artifacts()) or "none"
        raise ArtifactNotFoundError(
            f"no compiled artifact for contract {name!r} in {_PACKAGE}/{_SUBDIR}/ "
            f"(available: {have}); run `python -m meshcompute.chain.compile` after adding "
            "or renaming a contract"
        ) from None
    return json.loads(text)


def load_artifact(name: str) -> dict[str, Any]:
    """The artifact of contract ``name``: ``abi``, ``bytecode``, ``deployedBytecode`` (``0x``
    hex; ``"0x"`` for interfaces), ``contractName``, ``contractKind``, ``sourceName`` and
    ``compiler``. Parsed once and cached; each call returns a fresh copy, safe to mutate.

    Raises :class:`ArtifactNotFoundError` (a ``LookupError``) naming the missing contract.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ArtifactNotFoundError(f"invalid contract name {name!r}")
    return copy.deepcopy(_load(name))
