"""The verifier's local journal: its event cursor, and per job what it computed and posted.

One JSON file per (chain, verifier address), rewritten atomically (temp file, fsync, rename)
after every change. It makes the service idempotent across restarts and is the record of
blindness: the verifier's own output hash is written here, and synced to disk, *before* the
worker's output is downloaded (:meth:`Journal.record_own_output`).

Layout::

    {"version": 1, "cursor": 123,
     "tasks": {"7:audit": {"job_id": 7, "kind": "audit", "status": "pending",
                           "own_output_sha256": "...", "computed_at": 1790000000.0,
                           "evidence_hash": "0x..", "evidence_sha256": "...", "verdict": true,
                           "tx_hash": "0x..", "attempts": 1, "last_error": null}}}

Status: ``pending`` (still to do), ``posted`` (our verdict is on chain), ``skipped`` (nothing
left to do: settled by someone else, window closed, not ours to judge).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from meshcompute.errors import ConfigError
from meshcompute.files import write_json_atomic

JOURNAL_VERSION = 1
PENDING = "pending"
POSTED = "posted"
SKIPPED = "skipped"


def journal_path(data_dir: Path, chain_id: int, address: str) -> Path:
    return Path(data_dir).expanduser() / "verifier" / f"{chain_id}-{address.lower()}.json"


class Journal:
    """The journal file of one verifier; every mutating method persists before returning."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.cursor: int | None = None
        self.tasks: dict[str, dict[str, Any]] = {}
        self._load()

    # ------------------------------------------------------------------ reads
    def task(self, job_id: int, kind: str) -> dict[str, Any] | None:
        return self.tasks.get(_key(job_id, kind))

    def status(self, job_id: int, kind: str) -> str | None:
        task = self.task(job_id, kind)
        return None if task is None else str(task["status"])

    def pending(self) -> list[tuple[int, str]]:
        """(job id, kind) of every task still to do, oldest job first."""
        out = [(int(t["job_id"]), str(t["kind"])) for t in self.tasks.values()
               if t["status"] == PENDING]
        return sorted(out)

    def own_output(self, job_id: int, kind: str) -> str | None:
        task = self.task(job_id, kind)
        return None if task is None else task.get("own_output_sha256")

    # ------------------------------------------------------------------ writes
    def set_cursor(self, block: int) -> None:
        """Advance the cursor (never back) and save, with any tasks added since."""
        if self.cursor is None or block > self.cursor:
            self.cursor = int(block)
        self._save()

    def ensure(self, job_id: int, kind: str, *, save: bool = True) -> dict[str, Any]:
        """The task for (job, kind), created pending if new (saved unless ``save`` is False:
        tasks found while following events are saved with the cursor that covers them)."""
        key = _key(job_id, kind)
        if key not in self.tasks:
            self.tasks[key] = {
                "job_id": int(job_id),
                "kind": kind,
                "status": PENDING,
                "attempts": 0,
                "last_error": None,
            }
            if save:
                self._save()
        return self.tasks[key]

    def forget(self, job_id: int, kind: str, *, save: bool = True) -> None:
        """Drop a task that turned out to be nothing to do (a job not drawn for audit);
        with ``save`` False the caller calls :meth:`save` once after several."""
        if self.tasks.pop(_key(job_id, kind), None) is not None and save:
            self._save()

    def save(self) -> None:
        """Persist now (after changes made with ``save=False``)."""
        self._save()

    def record_own_output(self, job_id: int, kind: str, sha256: str) -> None:
        """Fix our own output hash on disk before anything else about the job is read."""
        task = self.ensure(job_id, kind)
        previous = task.get("own_output_sha256")
        if previous is not None and previous != sha256:
            raise ConfigError(
                f"journal {self.path} already holds output {previous} for job {job_id} "
                f"({kind}); refusing to replace it with {sha256}"
            )
        task["own_output_sha256"] = sha256
        task["computed_at"] = time.time()
        self._save()

    def note_attempt(self, job_id: int, kind: str, error: str | None) -> int:
        """Count an attempt (and its error, if any); returns the attempts so far."""
        task = self.ensure(job_id, kind)
        task["attempts"] = int(task.get("attempts", 0)) + 1
        task["last_error"] = error
        self._save()
        return int(task["attempts"])

    def mark_posted(self, job_id: int, kind: str, **details: Any) -> None:
        task = self.ensure(job_id, kind)
        task.update(details)
        task["status"] = POSTED
        task["last_error"] = None
        self._save()

    def mark_skipped(self, job_id: int, kind: str, reason: str) -> None:
        task = self.ensure(job_id, kind)
        if task["status"] == PENDING:
            task["status"] = SKIPPED
            task["skip_reason"] = reason
            self._save()

    # ------------------------------------------------------------------ file
    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise ConfigError(f"verifier journal {self.path} is unreadable ({exc})") from exc
        if not isinstance(data, dict) or data.get("version") != JOURNAL_VERSION:
            raise ConfigError(f"verifier journal {self.path} has an unknown format")
        cursor = data.get("cursor")
        self.cursor = None if cursor is None else int(cursor)
        self.tasks = {str(k): dict(v) for k, v in dict(data.get("tasks", {})).items()}

    def _save(self) -> None:
        body = {"version": JOURNAL_VERSION, "cursor": self.cursor, "tasks": self.tasks}
        write_json_atomic(self.path, body, indent=1, sort_keys=True, durable=True)


def _key(job_id: int, kind: str) -> str:
    return f"{int(job_id)}:{kind}"
