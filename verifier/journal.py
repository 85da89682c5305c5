"""The verifier's local journal: its event cursor, and per job what it computed and posted.

One file per (chain, verifier address): an append-only log of JSON lines, each change appended
and synced to disk (fsync) before the method that made it returns. It makes the service
idempotent across restarts and is the record of blindness: the verifier's own output hash is
written here, and synced to disk, *before* the worker's output is downloaded
(:meth:`Journal.record_own_output`).

A change costs one short line, however many tasks the journal holds: rewriting the whole file
on every change (version 1) cost time in proportion to every task the verifier had ever seen,
several times per audit, and at a market's load that came to most of a verifier's time within
minutes. When the log has grown to twice what it holds (and at least ``COMPACT_AFTER`` lines),
it is rewritten whole, atomically (temporary file, fsync, rename), so its size stays
proportional to the tasks.

Layout (version 2)::

    {"version": 2}
    {"cursor": 123}
    {"key": "7:audit", "task": {"job_id": 7, "kind": "audit", "status": "pending",
                                "own_output_sha256": "...", "computed_at": 1790000000.0,
                                "evidence_hash": "0x..", "evidence_sha256": "...",
                                "verdict": true, "tx_hash": "0x..", "attempts": 1,
                                "last_error": null}}
    {"key": "8:audit", "task": null}

Each line after the first is one change (the cursor, a task's whole new state, or a task
dropped); the last change of a key wins. A last line cut short by a crash is ignored (its
change had not returned); any other line that cannot be read makes the journal unreadable. A
version-1 file (one JSON document) is read and rewritten as version 2.

Status: ``pending`` (still to do), ``posted`` (our verdict is on chain), ``skipped`` (nothing
left to do: settled by someone else, window closed, not ours to judge).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from meshcompute.errors import ConfigError
from meshcompute.files import write_lines_atomic

JOURNAL_VERSION = 2
COMPACT_AFTER = 1000
"""Lines appended before the log may be compacted (it also waits until it is twice what it
holds)."""
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
        self._pending: set[str] = set()
        self._dirty: set[str] = set()
        self._cursor_dirty = False
        self._failed = False
        """An append failed: the next save writes the journal whole."""
        self._lines = 0
        """Changes in the file since it was last written whole."""
        self._load()

    # ------------------------------------------------------------------ reads
    def task(self, job_id: int, kind: str) -> dict[str, Any] | None:
        return self.tasks.get(_key(job_id, kind))

    def status(self, job_id: int, kind: str) -> str | None:
        task = self.task(job_id, kind)
        return None if task is None else str(task["status"])

    def pending(self) -> list[tuple[int, str]]:
        """(job id, kind) of every task still to do, oldest job first."""
        out = [(int(self.tasks[k]["job_id"]), str(self.tasks[k]["kind"])) for k in self._pending]
        return sorted(out)

    def own_output(self, job_id: int, kind: str) -> str | None:
        task = self.task(job_id, kind)
        return None if task is None else task.get("own_output_sha256")

    # ------------------------------------------------------------------ writes
    def set_cursor(self, block: int) -> None:
        """Advance the cursor (never back) and save, with any tasks added since."""
        if self.cursor is None or block > self.cursor:
            self.cursor = int(block)
            self._cursor_dirty = True
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
            self._changed(key)
            if save:
                self._save()
        return self.tasks[key]

    def forget(self, job_id: int, kind: str, *, save: bool = True) -> None:
        """Drop a task that turned out to be nothing to do (a job not drawn for audit);
        with ``save`` False the caller calls :meth:`save` once after several."""
        key = _key(job_id, kind)
        if self.tasks.pop(key, None) is not None:
            self._changed(key)
            if save:
                self._save()

    def save(self) -> None:
        """Persist now (after changes made with ``save=False``)."""
        self._save()

    def record_own_output(self, job_id: int, kind: str, sha256: str) -> None:
        """Fix our own output hash on disk before anything else about the job is read."""
        task = self.ensure(job_id, kind, save=False)
        previous = task.get("own_output_sha256")
        if previous is not None and previous != sha256:
            raise ConfigError(
                f"journal {self.path} already holds output {previous} for job {job_id} "
                f"({kind}); refusing to replace it with {sha256}"
            )
        task["own_output_sha256"] = sha256
        task["computed_at"] = time.time()
        self._changed(_key(job_id, kind))
        self._save()

    def note_attempt(self, job_id: int, kind: str, error: str | None) -> int:
        """Count an attempt (and its error, if any); returns the attempts so far."""
        task = self.ensure(job_id, kind, save=False)
        task["attempts"] = int(task.get("attempts", 0)) + 1
        task["last_error"] = error
        self._changed(_key(job_id, kind))
        self._save()
        return int(task["attempts"])

    def mark_posted(self, job_id: int, kind: str, **details: Any) -> None:
        task = self.ensure(job_id, kind, save=False)
        task.update(details)
        task["status"] = POSTED
        task["last_error"] = None
        self._changed(_key(job_id, kind))
        self._save()

    def mark_skipped(self, job_id: int, kind: str, reason: str) -> None:
        task = self.ensure(job_id, kind, save=False)
        if task["status"] == PENDING:
            task["status"] = SKIPPED
            task["skip_reason"] = reason
            self._changed(_key(job_id, kind))
        self._save()

    # ------------------------------------------------------------------ file
    def _changed(self, key: str) -> None:
        self._dirty.add(key)
        task = self.tasks.get(key)
        if task is not None and task["status"] == PENDING:
            self._pending.add(key)
        else:
            self._pending.discard(key)

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise ConfigError(f"verifier journal {self.path} is unreadable ({exc})") from exc
        lines = text.split("\n")
        try:
            head = json.loads(lines[0])
        except ValueError:
            try:  # version 1: the whole file is one JSON document, indented
                head = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"verifier journal {self.path} is unreadable ({exc})") from exc
        if not isinstance(head, dict) or head.get("version") not in (1, JOURNAL_VERSION):
            raise ConfigError(f"verifier journal {self.path} has an unknown format")
        if head["version"] == 1:
            cursor = head.get("cursor")
            self.cursor = None if cursor is None else int(cursor)
            self.tasks = {str(k): dict(v) for k, v in dict(head.get("tasks", {})).items()}
            self._pending = {k for k, t in self.tasks.items() if t["status"] == PENDING}
            self._compact()
            return
        body = [line for line in lines[1:] if line.strip()]
        torn_tail = not text.endswith("\n")
        for number, line in enumerate(body, start=2):
            try:
                change = json.loads(line)
                if "cursor" in change:
                    self.cursor = None if change["cursor"] is None else int(change["cursor"])
                elif change["task"] is None:
                    self.tasks.pop(str(change["key"]), None)
                else:
                    self.tasks[str(change["key"])] = dict(change["task"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                if torn_tail and number == len(body) + 1:
                    break  # cut short by a crash: that change never returned
                raise ConfigError(f"verifier journal {self.path} is unreadable (line "
                                  f"{number}: {exc})") from exc
        self._lines = len(body)
        self._pending = {k for k, t in self.tasks.items() if t["status"] == PENDING}
        if torn_tail:
            self._compact()  # a new line must not be glued to the torn one

    def _save(self) -> None:
        # the cursor goes last: a write torn by a crash may keep some of the tasks the events
        # below the cursor created, but never a cursor past tasks it lost (those events are
        # read again after a restart)
        changes: list[dict[str, Any]] = [{"key": key, "task": self.tasks.get(key)}
                                         for key in sorted(self._dirty)]
        if self._cursor_dirty:
            changes.append({"cursor": self.cursor})
        if self._failed or not self.path.exists() or (
                changes and self._lines + len(changes) > max(COMPACT_AFTER, 2 * len(self.tasks))):
            self._compact()
            return
        if not changes:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as out:
                out.write("".join(json.dumps(c, sort_keys=True) + "\n" for c in changes))
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            # not on disk: keep the changes, and write the journal whole next time (an append
            # cut short may have left part of a line the next one would be glued to)
            self._failed = True
            raise
        self._dirty.clear()
        self._cursor_dirty = False
        self._lines += len(changes)

    def _compact(self) -> None:
        """Write the journal whole: the header, the cursor, every task (atomically)."""
        lines = [{"version": JOURNAL_VERSION}, {"cursor": self.cursor},
                 *({"key": key, "task": task} for key, task in self.tasks.items())]
        write_lines_atomic(self.path, [json.dumps(line, sort_keys=True) for line in lines],
                           durable=True)
        self._lines = len(lines) - 1
        self._dirty.clear()
        self._cursor_dirty = False
        self._failed = False


def _key(job_id: int, kind: str) -> str:
    return f"{int(job_id)}:{kind}"
