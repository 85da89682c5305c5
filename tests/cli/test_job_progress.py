"""``mesh job submit`` never waits in silence: off a terminal it prints one line per change (not
per poll), each distinct worker failure once with its counts, and a stuck diagnosis once (what
is wrong, that nothing more will happen, how and when the escrow comes back); ``--json`` carries
the phase counts and the diagnosis. ``mesh job status`` shows the same. The client is a fake
that replays snapshots built by the client's own pure functions (no chain, no market)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from meshcompute.client import (
    Shard,
    ShardProgress,
    Submission,
    SubmissionStatus,
    SubmissionStuck,
    local_time,
    submission_status,
)
from meshcompute.core.job import JobState
from meshcompute.core.lease import MAX_FAILURES
from meshcompute.core.spec import JobSpec
from meshcompute.mesh.cli import job as job_cli
from meshcompute.settings import get_settings
from meshcompute.units import TOKEN

W = ["0x" + f"{n:02x}" * 20 for n in range(1, 4)]
PICKLED = "holds pickled example inputs; refused (torch.load would unpickle them)"
DEADLINE = 1_700_003_600
NOW = 1_700_000_000
JOBS = [11, 12, 13, 14]


def shards(**by_index: ShardProgress) -> list[ShardProgress]:
    base = {i: ShardProgress(i, JOBS[i], JobState.POSTED, deadline=DEADLINE) for i in range(4)}
    base.update({int(k[1:]): v for k, v in by_index.items()})
    return [base[i] for i in range(4)]


def tried(index: int, workers: int, **extra) -> ShardProgress:
    return ShardProgress(index, JOBS[index], JobState.POSTED, deadline=DEADLINE,
                         failures=tuple((w, PICKLED) for w in W[:workers]), **extra)


def snapshot(items: list[ShardProgress]) -> SubmissionStatus:
    return submission_status(items, chain_now=NOW, escrow_per_shard=TOKEN + TOKEN // 10)


#: What ``wait`` reports, poll after poll: repeats must not print again.
RUN = [
    snapshot(shards()),
    snapshot(shards()),
    snapshot(shards(s0=tried(0, 1))),
    snapshot(shards(s0=tried(0, 1))),
    snapshot(shards(**{f"s{i}": tried(i, 2) for i in range(4)})),
    snapshot(shards(**{f"s{i}": tried(i, MAX_FAILURES, given_up=True) for i in range(4)})),
]


def the_submission() -> Submission:
    spec = JobSpec(program="aa" * 32, inputs="bb" * 32, group="cc" * 32, shards=4)
    return Submission(group="cc" * 32, program="aa" * 32,
                      shards=[Shard(i, spec, j, [j]) for i, j in enumerate(JOBS)],
                      reward_per_shard=TOKEN, audit_fee_per_shard=TOKEN // 10,
                      collateral_per_shard=2 * TOKEN, audit_bps=0, deadline_s=3600)


class FakeClient:
    def __init__(self, run: list[SubmissionStatus]) -> None:
        self.run = run

    def submit(self, program, inputs, *, progress, shards, **kwargs) -> Submission:
        progress(SubmissionStatus("uploading", {}, shards, "program"))
        progress(SubmissionStatus("uploading", {"uploaded": 4}, shards, "shards 0-3"))
        progress(SubmissionStatus("posting", {}, shards, "escrow on chain"))
        progress(SubmissionStatus("posted", {"posted": 4}, shards, f"jobs {JOBS}"))
        return the_submission()

    def wait(self, submission, *, progress):
        for status in self.run:
            progress(status)
        if self.run[-1].stuck is not None:
            raise SubmissionStuck(self.run[-1])

    def status(self, submission, *, market=True) -> SubmissionStatus:
        return self.run[-1]

    def verification(self, submission) -> dict[int, str]:
        return {s.index: s.state.name.lower() for s in self.run[-1].shards}


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    monkeypatch.setenv("MESH_DATA_DIR", str(tmp_path / "mesh"))
    program, inputs = tmp_path / "p.pt2", tmp_path / "x.safetensors"
    program.write_bytes(b"program")
    inputs.write_bytes(b"inputs")
    return str(program), str(inputs)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient(RUN)
    monkeypatch.setattr(job_cli, "_client", lambda: client)
    return client


def test_submit_wait_prints_each_change_once_then_the_diagnosis(run_mesh, files, fake) -> None:
    program, inputs = files
    result = run_mesh("job", "submit", program, "--inputs", inputs, "--shards", "4")
    assert result.code == 1 and "Traceback" not in result.err
    lines = [line.split("] ", 1)[-1] for line in result.err.splitlines()]
    assert lines[:9] == [
        "uploading: program",
        "uploading: shards 0-3",
        "posting: escrow on chain",
        f"posted: jobs {JOBS}",
        "running: posted 4 (of 4)",  # printed once for two identical polls
        f"  failure: 1 worker, shard 0: {PICKLED}",
        f"  failure: 2 workers, shards 0-3: {PICKLED}",
        "stuck: posted 4 (of 4)",
        f"  failure: {MAX_FAILURES} workers, shards 0-3: {PICKLED}",
    ]
    text = " ".join(result.err.split())
    assert text.count("will never run") == 2  # the diagnosis once, then the error line
    assert "stuck: shards 0-3 (jobs 11, 12, 13, 14) will never run: every worker that " \
           "tried refused them for the same reason:" in text
    assert "Nothing more will happen to them" in text
    assert "(4.4 MESH) comes back at once with `mesh job reclaim JOB` for each of jobs 11, " \
           "12, 13, 14: no worker holds them" in text
    assert result.err.splitlines()[-1].startswith("error: shards 0-3 will never run")
    assert result.out == ""
    saved = json.loads((Path(files[0]).parent / "mesh" / "submissions" / f"{'cc' * 32}.json")
                       .read_text())
    assert [s["job_id"] for s in saved["shards"]] == JOBS


def test_submit_json_carries_phases_and_the_diagnosis(run_mesh, files, fake) -> None:
    program, inputs = files
    result = run_mesh("job", "submit", program, "--inputs", inputs, "--shards", "4", "--json")
    assert result.code == 1
    assert result.error_lines == [result.err.strip()]  # only the error line: no progress
    data = json.loads(result.out)
    assert data["job_ids"] == JOBS and data["phase"] == "stuck"
    assert data["phases"] == {"posted": 4, "leased": 0, "committed": 0, "audited": 0,
                              "paid": 0, "refunded": 0, "slashed": 0}
    assert data["failures"] == [{"reason": PICKLED, "reports": 4 * MAX_FAILURES,
                                 "workers": MAX_FAILURES, "shards": [0, 1, 2, 3],
                                 "source": "worker"}]
    stuck = data["stuck"]
    assert stuck["same_reason"] and stuck["reason"] == PICKLED
    assert stuck["job_ids"] == JOBS and stuck["deadline"] == DEADLINE
    assert stuck["deadline_local"] == local_time(DEADLINE)
    assert stuck["reclaim"] == [f"mesh job reclaim {j}" for j in JOBS]
    assert "will never run" in data["error"]


def test_submit_no_wait_json_says_all_posted(run_mesh, files, fake) -> None:
    program, inputs = files
    result = run_mesh("job", "submit", program, "--inputs", inputs, "--shards", "4",
                      "--no-wait", "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["phases"]["posted"] == 4 and data["stuck"] is None and data["failures"] == []


def test_status_shows_phases_failures_and_the_diagnosis(run_mesh, files, fake) -> None:
    get_settings.cache_clear()  # the data dir of this test
    job_cli.save_submission(the_submission())
    result = run_mesh("job", "status", "cc" * 32, "--json")
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert [row["phase"] for row in data["shards"]] == ["posted"] * 4
    assert data["shards"][0]["failures"][0] == {"worker": W[0], "reason": PICKLED}
    assert data["phases"]["posted"] == 4 and data["stuck"]["job_ids"] == JOBS
    table = run_mesh("job", "status", "cc" * 32)
    assert table.code == 0, table.err
    text = " ".join(table.out.split())
    assert "phase" in text and "will never run" in text and "mesh job reclaim" in text


def test_the_live_display_renders_and_prints_the_diagnosis_once() -> None:
    buffer = io.StringIO()
    out = Console(file=buffer, force_terminal=True, width=120)
    ticks = iter(range(0, 1000, 5))
    with job_cli._Watch(out, 4, clock=lambda: float(next(ticks))) as watch:
        assert watch.live
        for status in RUN + RUN[-1:]:
            watch(status)
        shown = watch._render()
    text = buffer.getvalue()
    assert text.count("will never run") == 1
    plain = Console(file=io.StringIO(), width=120)
    plain.print(shown)
    rendered = plain.file.getvalue()
    assert "posted 4 · leased 0 · committed 0" in rendered and PICKLED in rendered


def test_a_hint_once_when_nothing_moves_and_no_worker_tried() -> None:
    buffer = io.StringIO()
    out = Console(file=buffer, width=200)
    now = [0.0]
    watch = job_cli._Watch(out, 4, live=False, clock=lambda: now[0], hint_after_s=60)
    watch.submission = the_submission()
    idle = snapshot(shards())
    for t in (0, 30, 61, 90, 400):
        now[0] = t
        watch(idle)
    text = buffer.getvalue()
    assert text.count("waiting: no worker has taken a shard for 0:01:01") == 1
    assert "device cpu, 2048 MB of memory, a price of at most 1 MESH per shard" in text
    assert "does not publish its workers' free stake or slots" in text
    assert "`mesh job reclaim JOB` cancels a shard no worker holds and returns its escrow " \
           "at once" in " ".join(text.split())
    assert len(text.splitlines()) == 2  # the one status line and the hint


def test_worker_reasons_are_not_rich_markup() -> None:
    buffer = io.StringIO()
    watch = job_cli._Watch(Console(file=buffer, width=200), 1, live=False)
    sneaky = ShardProgress(0, 1, JobState.POSTED, failures=((W[0], "[red]boom[/red]"),))
    watch(submission_status([sneaky]))
    assert "[red]boom[/red]" in buffer.getvalue()
