"""The health record a long-running service leaves for its ``health`` command (and container
health checks): a small JSON file, rewritten atomically after each heartbeat or poll.

    write_health(settings.data_dir / "worker-health.json", {"last_heartbeat": time.time(), ...})

Each service reads back its own record (what "healthy" means differs); fields whose names
suggest key material are never written (:func:`meshcompute.logs.redact`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshcompute.files import write_json_atomic
from meshcompute.logs import redact


def write_health(path: Path, record: Mapping[str, Any]) -> None:
    """Replace the file at ``path`` with ``record`` as JSON, atomically (a reader sees the old
    record or the new one, never half of one); creates the folder when missing."""
    write_json_atomic(path, redact(record))
