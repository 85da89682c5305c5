"""The end-to-end bench's load (mesh/bench/stack_bench.py): its count of jobs posted and not
final, kept as jobs are posted and the chain's events are collected (the closed loop reads it
many times a second), against a chain played by a small fake (what the count does with each
event is what is tested, not the chain)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from meshcompute.mesh.bench.stack_bench import E2ELoad


class _Chain:
    def __init__(self) -> None:
        self.events: list[tuple[int, str, int, bool]] = []  # block, name, job, audited
        self.block_number = 0
        self.w3 = SimpleNamespace(eth=self)

    def emit(self, name: str, job_id: int, audited: bool = False) -> None:
        self.block_number += 1
        self.events.append((self.block_number, name, job_id, audited))

    def job_events(self, _ids: Any, first: int, last: int, names: tuple[str, ...]) -> list[Any]:
        return [SimpleNamespace(name=name, args={"jobId": job, "audited": audited})
                for block, name, job, audited in self.events
                if first <= block <= last and name in names]


class _Client:
    def __init__(self, chain: _Chain) -> None:
        self.connection = SimpleNamespace(contracts=chain)
        self.next_ids: list[int] = []

    def submit(self, *_args: Any, **_kwargs: Any) -> Any:
        return SimpleNamespace(job_ids=self.next_ids)


def _load() -> tuple[E2ELoad, _Chain, _Client]:
    chain = _Chain()
    client = _Client(chain)
    return E2ELoad(stack=None, posters=[client], program=None, batch=2, next_block=1), chain, client


def test_the_count_follows_posts_draws_and_ends() -> None:
    load, chain, client = _load()
    client.next_ids = [1, 2]
    load.submit(client, seed=0)
    client.next_ids = [3, 4]
    load.submit(client, seed=1)
    assert (load.outstanding(), load.outstanding(audited=False)) == (4, 4)
    chain.emit("AuditDrawn", 1, audited=True)
    chain.emit("AuditDrawn", 2, audited=False)  # drawn and not picked: an ordinary job
    chain.emit("JobPaid", 3)
    load.collect()
    assert (load.outstanding(), load.outstanding(audited=False)) == (3, 2)
    chain.emit("JobPaid", 1)  # the audited one, paid after its verdict
    chain.emit("JobSlashed", 2)
    chain.emit("JobRefunded", 2)  # a second final event for a job changes nothing
    load.collect()
    assert (load.outstanding(), load.outstanding(audited=False)) == (1, 1)
    assert load.outcome == {3: "JobPaid", 1: "JobPaid", 2: "JobSlashed"}
    assert load.audited == {1}
    load.collect()  # nothing new
    assert (load.outstanding(), load.outstanding(audited=False)) == (1, 1)


def test_a_job_seen_ending_before_its_post_returned_is_not_counted() -> None:
    load, chain, client = _load()
    chain.emit("AuditDrawn", 5, audited=True)
    chain.emit("JobPaid", 6)
    load.collect()
    client.next_ids = [5, 6, 7]
    load.submit(client, seed=0)
    assert (load.outstanding(), load.outstanding(audited=False)) == (2, 1)
