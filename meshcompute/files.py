"""Small files written atomically: records, journals and health files a reader may open at any
moment (another process, a restart after a crash) see the old content or the new, never half.

    write_json_atomic(data_dir / "chain.json", record, indent=2)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any, *, indent: int | None = None,
                      sort_keys: bool = False, durable: bool = False) -> Path:
    """Replace ``path`` with ``data`` as JSON (a trailing newline when indented): written to a
    temporary file in the same folder, then renamed over it. Creates the folder when missing;
    the temporary file never outlives a failure. ``durable`` also fsyncs before the rename (a
    journal that must survive a power cut)."""
    text = json.dumps(data, indent=indent, sort_keys=sort_keys)
    return _replace(path, text + "\n" if indent is not None else text, durable, ".json")


def write_lines_atomic(path: Path, lines: list[str], *, durable: bool = False) -> Path:
    """Replace ``path`` with ``lines``, each ended by a newline, the way
    :func:`write_json_atomic` replaces a file (a log rewritten whole when it is compacted)."""
    return _replace(path, "".join(line + "\n" for line in lines), durable, ".tmp")


def _replace(path: Path, text: str, durable: bool, suffix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, path)
        if durable:  # the rename itself must survive a power cut
            folder = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
