"""The dashboard's figures, the pure part: what a page shows, folded from job records, chain
events and an earnings report the adapters read (``meshcompute.market.dashboard.views``).

Money is carried as decimal strings of wei (a JavaScript number cannot hold it); addresses as
the chain gives them (checksummed); bytes as 0x-hex. Nothing here reads a clock, Redis or the
chain: ``now`` and every block time are arguments, so each figure is a function of its inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from meshcompute.core.job import JobRecord, JobState

ZERO_ADDRESS = "0x" + "00" * 20

#: Minutes of history the overview's series covers, one bucket a minute.
SERIES_MINUTES = 60
SERIES_BUCKET_S = 60


class EventLike(Protocol):
    """What the folds read of a chain event (``meshcompute.chain.contracts.ChainEvent``)."""

    @property
    def name(self) -> str: ...
    @property
    def args(self) -> dict[str, Any]: ...
    @property
    def block_number(self) -> int: ...
    @property
    def tx_hash(self) -> str: ...
    @property
    def log_index(self) -> int: ...


def wei(value: int) -> str:
    return str(int(value))


def text_value(value: Any) -> Any:
    """An event argument or record field as JSON the page can show exactly: integers as
    decimal strings, bytes as 0x-hex, booleans and strings as they are."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, list | tuple):
        return [text_value(v) for v in value]
    return value


def record_json(record: JobRecord) -> list[Any]:
    """The on-chain Job struct, field for field in ABI order, as a wallet passes it to
    ``reclaim(jobId, job)``: integers as decimal strings, bytes32 as 0x-hex."""
    return [text_value(v) for v in record.as_tuple()]


def reclaimable(record: JobRecord, chain_now: int) -> bool:
    """Whether the client may take its escrow back now (``JobMarket.reclaim``): nobody holds
    the job on chain, or its worker let the deadline pass without a result."""
    if record.state == JobState.POSTED:
        return True
    return record.state == JobState.ASSIGNED and chain_now > record.deadline


def state_name(state: JobState) -> str:
    return state.name.lower()


def job_states(tallies: Mapping[str, int]) -> dict[str, Any]:
    """Jobs by state over all history (the index's tallies, pruned jobs included)."""
    by_state = {state_name(s): int(tallies.get(f"state:{state_name(s)}", 0))
                for s in JobState if s != JobState.NONE}
    open_ = sum(n for s, n in by_state.items() if not JobState[s.upper()].terminal)
    return {"by_state": by_state, "open": open_, "total": sum(by_state.values())}


def audit_outcomes(tallies: Mapping[str, int]) -> dict[str, int]:
    return {name: int(tallies.get(f"audit:{name}", 0))
            for name in ("drawn", "not_drawn", "passed", "failed", "voided", "appealed")}


#: States where a verdict is awaited: a verifier's backlog.
BACKLOG_STATES = (JobState.AUDITED, JobState.APPEALED, JobState.DISPUTED,
                  JobState.APPEAL_CONTESTED, JobState.DISPUTE_CONTESTED, JobState.VOID_PROPOSED,
                  JobState.FAILURE_ESCALATED, JobState.PASS_ESCALATED)


def verifier_backlog(by_state: Mapping[str, int]) -> int:
    return sum(int(by_state.get(state_name(s), 0)) for s in BACKLOG_STATES)


def series_start(now: float, *, minutes: int = SERIES_MINUTES,
                 bucket_s: int = SERIES_BUCKET_S) -> int:
    """The first second of the overview's series: ``minutes`` whole buckets ending with the
    current one."""
    return (int(now) // bucket_s - minutes + 1) * bucket_s


def ended_series(counts: Mapping[str, Sequence[int]], start: int, *,
                 bucket_s: int = SERIES_BUCKET_S) -> dict[str, Any]:
    """Jobs that ended per bucket from ``start``, oldest bucket first, by final state as the
    index counts them (``finalized``, ``slashed``, ``refunded``): ``settled`` (paid),
    ``slashed`` and ``refunded`` (void or reclaimed)."""
    return {"bucket_s": bucket_s, "start": start,
            "settled": list(counts.get("finalized", [])),
            "slashed": list(counts.get("slashed", [])),
            "refunded": list(counts.get("refunded", []))}


#: What the market samples each minute (``MarketState.record_sample``).
SAMPLED = ("workers_online", "open_jobs", "backlog")


def sampled_series(samples: Mapping[int, Mapping[str, int]], start: int, *,
                   minutes: int = SERIES_MINUTES) -> dict[str, list[int | None]]:
    """The per-minute samples from unix second ``start`` on, one value per bucket of
    :func:`ended_series` (None for a minute with no sample: the market's tasks were down)."""
    first = start // 60
    return {name: [None if (row := samples.get(first + i)) is None else row.get(name)
                   for i in range(minutes)] for name in SAMPLED}


@dataclass(frozen=True)
class WorkerRow:
    address: str
    device: str
    price_wei: int
    slots: int
    last_seen: float


def workers_online(workers: Sequence[WorkerRow], now: float,
                   timeout_s: float) -> dict[str, Any]:
    """Workers heard from within ``timeout_s``: how many, by device with their price range,
    and each one (cheapest first)."""
    online = sorted((w for w in workers if w.last_seen >= now - timeout_s),
                    key=lambda w: (w.price_wei, w.address))
    devices: dict[str, list[WorkerRow]] = {}
    for w in online:
        devices.setdefault(w.device, []).append(w)
    return {
        "online": len(online),
        "by_device": [{"device": device, "count": len(rows),
                       "min_price_wei": wei(min(r.price_wei for r in rows)),
                       "max_price_wei": wei(max(r.price_wei for r in rows))}
                      for device, rows in sorted(devices.items())],
        "list": [{"address": w.address, "device": w.device, "price_wei": wei(w.price_wei),
                  "slots": w.slots, "last_seen": w.last_seen} for w in online[:100]],
    }


def timeline(events: Sequence[EventLike], time_of: Callable[[int], int]) -> list[dict[str, Any]]:
    """A job's events in chain order, each with its block, time and transaction."""
    ordered = sorted(events, key=lambda e: (e.block_number, e.log_index))
    return [{"event": e.name, "block": e.block_number, "time": time_of(e.block_number),
             "tx": e.tx_hash, "args": {k: text_value(v) for k, v in e.args.items()}}
            for e in ordered]


def audit_story(events: Sequence[EventLike]) -> dict[str, Any]:
    """What the events say of a job's audit: whether it was drawn (None until the draw is
    taken), the first verdict (``passed``, ``failed``, ``void proposed`` until a second seat
    confirms it, then ``void``) with its verifier and evidence, an appeal or dispute with its
    verdict, the contest of an appeal verdict that overturned the first (a third seat's), and
    the escalation of one that upheld it (by the party it went against; a third seat's)."""
    story: dict[str, Any] = {"drawn": None, "verdict": None, "verifier": None,
                             "evidence": None, "appeal": None, "contest": None,
                             "escalation": None}
    for e in sorted(events, key=lambda e: (e.block_number, e.log_index)):
        if e.name == "AuditDrawn":
            story["drawn"] = bool(e.args.get("audited"))
        elif e.name in ("AuditResolved", "AuditVoided", "VoidProposed"):
            story["drawn"] = True
            story["verdict"] = ("void" if e.name == "AuditVoided"
                                else "void proposed" if e.name == "VoidProposed"
                                else "passed" if e.args.get("passed") else "failed")
            story["verifier"] = e.args.get("verifier")
            story["evidence"] = text_value(e.args.get("evidenceHash"))
        elif e.name == "AuditAppealed":
            story["appeal"] = {"by": e.args.get("appellant"), "verifier": None,
                               "worker_wins": None, "evidence": None}
        elif e.name == "AppealEscalated":
            story["escalation"] = {"by": e.args.get("appellant"), "verifier": None,
                                   "worker_wins": None, "evidence": None}
        elif (e.name in ("AppealResolved", "AppealContested", "AppealUpheld")
              and story["appeal"] is not None):
            verdict = {"verifier": e.args.get("verifier"),
                       "worker_wins": bool(e.args.get("workerWins")),
                       "evidence": text_value(e.args.get("evidenceHash"))}
            if e.name == "AppealContested":
                story["contest"] = {"verifier": None, "worker_wins": None, "evidence": None}
            third = story["escalation"] or story["contest"]
            if e.name == "AppealResolved" and third is not None:
                third.update(verdict)
            else:
                story["appeal"].update(verdict)
    return story


#: The JobMarket events that name a verifier (second indexed topic) in what they say of it.
VERIFIER_EVENTS = ("AuditResolved", "AuditVoided", "VoidProposed", "AppealResolved",
                   "AppealContested", "AppealUpheld", "AuditFeePaid", "VerifierSlashed")


def verifier_story(events: Sequence[EventLike], time_of: Callable[[int], int],
                   *, recent: int = 50) -> dict[str, Any]:
    """A verifier's record from the events that name it (:data:`VERIFIER_EVENTS`, already
    filtered to it): first verdicts by kind, appeals judged, verdicts of its overturned
    (bond lost), fees earned, and its latest verdicts, newest first."""
    verdicts = {"passed": 0, "failed": 0, "void": 0}
    appeals = overturned = fees = bonds = 0
    rows: list[dict[str, Any]] = []
    for e in sorted(events, key=lambda e: (e.block_number, e.log_index)):
        job_id = int(e.args.get("jobId", 0))
        if e.name in ("AuditResolved", "AuditVoided", "VoidProposed"):
            verdict = ("void" if e.name in ("AuditVoided", "VoidProposed")
                       else "passed" if e.args.get("passed") else "failed")
            verdicts[verdict] += 1
            kind = {"AuditVoided": "void confirmed", "VoidProposed": "void proposed"}
            rows.append({"job_id": job_id, "kind": kind.get(e.name, "audit"), "verdict": verdict})
        elif e.name in ("AppealResolved", "AppealContested", "AppealUpheld"):
            appeals += 1
            rows.append({"job_id": job_id, "kind": "appeal",
                         "verdict": "worker wins" if e.args.get("workerWins")
                         else "worker loses"})
        elif e.name == "AuditFeePaid":
            fees += int(e.args.get("amount", 0))
            continue
        elif e.name == "VerifierSlashed":
            overturned += 1
            bonds += int(e.args.get("amount", 0))
            continue
        else:
            continue
        rows[-1].update(block=e.block_number, time=time_of(e.block_number), tx=e.tx_hash)
    return {"audits": sum(verdicts.values()), "verdicts": verdicts, "appeals_judged": appeals,
            "overturned": overturned, "fees_earned_wei": wei(fees),
            "bonds_lost_wei": wei(bonds), "recent": rows[::-1][:recent]}


def utc_day(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(int(timestamp)))


def earnings_by_day(report: Mapping[str, Any]) -> tuple[list[dict[str, str]], dict[str, str]]:
    """``mesh earnings --json`` (``EarningsReport.to_json``) folded by UTC day (oldest first)
    and by status: pay credited (``final``), pay awaiting settlement (``pending``) and stake
    slashed. Sums of the report's own rows, so the page equals the CLI to the wei."""
    days: dict[str, dict[str, int]] = {}
    totals = {"paid": 0, "pending": 0, "slashed": 0}

    def add(day: str, key: str, amount: int) -> None:
        row = days.setdefault(day, {"final": 0, "pending": 0, "slashed": 0})
        row[key] += amount

    for row in report.get("rows", []):
        amount = int(row["amount"]["wei"])
        final = row["status"] == "final"
        add(utc_day(row["timestamp"]), "final" if final else "pending", amount)
        totals["paid" if final else "pending"] += amount
    for row in report.get("slashes", []):
        amount = int(row["amount"]["wei"])
        add(utc_day(row["timestamp"]), "slashed", amount)
        totals["slashed"] += amount
    by_day = [{"day": day, "final_wei": wei(v["final"]), "pending_wei": wei(v["pending"]),
               "slashed_wei": wei(v["slashed"])} for day, v in sorted(days.items())]
    return by_day, {f"{k}_wei": wei(v) for k, v in totals.items()}


def address_or_none(value: str) -> str | None:
    """None for the zero address (no worker, no auditor yet)."""
    return None if value.lower() == ZERO_ADDRESS else value
