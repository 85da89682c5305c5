"""Build hostile ``.pt2`` variants from a good one, for the bad-job tests."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


class CodePayload:
    """Unpickling this creates ``marker`` (proof that code from the file ran)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def code_pickle(marker: Path) -> bytes:
    return pickle.dumps(CodePayload(marker), protocol=2)


def members(program: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(program)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def rebuild(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def replace_member(program: bytes, suffix: str, data: bytes) -> bytes:
    files = members(program)
    (name,) = [n for n in files if n.endswith(suffix)]
    files[name] = data
    return rebuild(files)


def edit_json(program: bytes, suffix: str, edit: Callable[[Any], None]) -> bytes:
    files = members(program)
    (name,) = [n for n in files if n.endswith(suffix)]
    document = json.loads(files[name])
    edit(document)
    files[name] = json.dumps(document).encode()
    return rebuild(files)


def edit_model(program: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    return edit_json(program, "models/model.json", edit)


def nodes(model: dict[str, Any]) -> list[dict[str, Any]]:
    return model["graph_module"]["graph"]["nodes"]
