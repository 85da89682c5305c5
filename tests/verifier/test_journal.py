"""The verifier's journal (verifier/journal.py): an append-only log whose every change is on
disk when the method returns, that survives a crash mid-line, reads the version-1 file it
replaces, and is compacted so it stays proportional to what it holds; a change appends one
line however many tasks it holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshcompute.errors import ConfigError
from meshcompute.verifier import journal as journal_module
from meshcompute.verifier.journal import PENDING, POSTED, SKIPPED, Journal


def _fill(journal: Journal, jobs: range) -> None:
    for job_id in jobs:
        journal.ensure(job_id, "audit", save=False)
    journal.set_cursor(max(jobs))


def test_every_change_is_on_disk_when_the_method_returns(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    journal = Journal(path)
    _fill(journal, range(1, 6))
    journal.record_own_output(2, "audit", "aa" * 32)
    assert Journal(path).own_output(2, "audit") == "aa" * 32
    journal.mark_posted(2, "audit", verdict=True, tx_hash="0x01")
    journal.mark_skipped(3, "audit", "not ours")
    journal.forget(4, "audit")
    assert journal.note_attempt(5, "audit", "boom") == 1
    again = Journal(path)
    assert again.cursor == 5
    assert again.tasks == journal.tasks
    assert again.pending() == [(1, "audit"), (5, "audit")]
    assert again.status(2, "audit") == POSTED and again.task(2, "audit")["tx_hash"] == "0x01"
    assert again.status(3, "audit") == SKIPPED and again.task(4, "audit") is None
    assert again.task(5, "audit")["last_error"] == "boom"


def test_a_line_cut_short_by_a_crash_is_ignored_and_any_other_bad_line_is_refused(
        tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    journal = Journal(path)
    _fill(journal, range(1, 3))
    journal.record_own_output(1, "audit", "aa" * 32)
    whole = path.read_text()
    path.write_text(whole + '{"key": "2:audit", "task": {"job_id": 2, "kin')  # torn append
    torn = Journal(path)
    assert torn.own_output(1, "audit") == "aa" * 32
    assert torn.status(2, "audit") == PENDING
    torn.mark_posted(2, "audit", verdict=False)  # the next change is not glued to the tear
    assert Journal(path).status(2, "audit") == POSTED

    lines = whole.splitlines()
    path.write_text("\n".join([*lines[:2], "{not json", *lines[2:]]) + "\n")
    with pytest.raises(ConfigError, match="unreadable .line 3"):
        Journal(path)
    path.write_text("{broken")
    with pytest.raises(ConfigError, match="unreadable"):
        Journal(path)
    path.write_text('{"version": 7}\n')
    with pytest.raises(ConfigError, match="unknown format"):
        Journal(path)


def test_a_version_1_journal_is_read_and_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "j.json"
    tasks = {"7:audit": {"job_id": 7, "kind": "audit", "status": PENDING, "attempts": 0,
                         "last_error": None, "own_output_sha256": "cc" * 32},
             "8:appeal": {"job_id": 8, "kind": "appeal", "status": POSTED, "attempts": 1,
                          "last_error": None}}
    path.write_text(json.dumps({"version": 1, "cursor": 40, "tasks": tasks}, indent=1))
    journal = Journal(path)
    assert journal.cursor == 40 and journal.tasks == tasks
    assert journal.pending() == [(7, "audit")]
    assert json.loads(path.read_text().splitlines()[0]) == {"version": 2}
    assert Journal(path).tasks == tasks


def test_the_log_is_compacted_and_a_change_costs_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(journal_module, "COMPACT_AFTER", 50)
    path = tmp_path / "j.json"
    journal = Journal(path)
    _fill(journal, range(1, 201))  # 200 tasks
    size = len(path.read_text().splitlines())
    journal.mark_skipped(1, "audit", "not ours")
    journal.mark_skipped(2, "audit", "not ours")
    assert len(path.read_text().splitlines()) == size + 2  # one line each, not the whole file
    for job_id in range(3, 201):
        journal.mark_skipped(job_id, "audit", "not ours")
    journal.set_cursor(500)
    # 200 tasks and 201 changes since: rewritten whole once past twice what it holds, a change
    # or so ago (without, it would be size + 201 lines)
    lines = len(path.read_text().splitlines())
    assert lines <= size + 2, (size, lines)
    again = Journal(path)
    assert again.tasks == journal.tasks and again.cursor == 500 and again.pending() == []


def test_a_torn_batch_never_keeps_a_cursor_past_the_tasks_it_lost(tmp_path: Path) -> None:
    """Tasks found while following events are written with the cursor that covers them, in
    one append: the cursor is its last line, so a crash that keeps only part of the append
    leaves the cursor where those events are read again."""
    path = tmp_path / "j.json"
    journal = Journal(path)
    journal.set_cursor(10)
    before = path.read_text()
    for job_id in (1, 2, 3):
        journal.ensure(job_id, "audit", save=False)
    journal.set_cursor(20)
    appended = path.read_text()[len(before):].splitlines()
    assert json.loads(appended[-1]) == {"cursor": 20}
    for keep in range(len(appended)):  # every place the append could have been cut
        path.write_text(before + "\n".join(appended[:keep]) + ("\n" if keep else "")
                        + appended[keep][: len(appended[keep]) // 2])
        again = Journal(path)
        assert again.cursor == 10, keep


def test_a_failed_append_keeps_its_changes_and_writes_the_journal_whole_next(
        tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "j.json"
    journal = Journal(path)
    _fill(journal, range(1, 3))
    real_fsync = journal_module.os.fsync

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        journal.record_own_output(1, "audit", "aa" * 32)
    with open(path, "a", encoding="utf-8") as out:
        out.write('{"key": "1:au')  # what the failed append left behind
    monkeypatch.setattr(journal_module.os, "fsync", real_fsync)
    journal.mark_skipped(2, "audit", "not ours")  # the next save: the journal written whole
    again = Journal(path)
    assert again.own_output(1, "audit") == "aa" * 32
    assert again.status(2, "audit") == SKIPPED
