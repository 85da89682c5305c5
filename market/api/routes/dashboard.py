"""The dashboard (docs/dashboard-api.md): the page and its assets, the JSON each view reads, and
a stream of ticks that tells open pages when the index moved (and carries the overview itself
to the pages that show it). All public and unsigned, read only, rate-limited per IP like every
unsigned route."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import requests
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response, StreamingResponse

from meshcompute.errors import BadInput, NotFound, ServiceUnavailable
from meshcompute.market.api.deps import Runtime
from meshcompute.market.dashboard import views

router = APIRouter(tags=["dashboard"])
log = logging.getLogger(__name__)

DIST = Path(views.__file__).resolve().parent / "web" / "dist"
_ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MEDIA = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
          ".png": "image/png", ".woff2": "font/woff2", ".map": "application/json",
          ".json": "application/json", ".ico": "image/x-icon"}


#: The page runs only its own script and talks only to this market: nothing injected into a
#: job's data can load a script, and no other site can frame the page's wallet buttons.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@router.get("/dashboard", response_class=FileResponse, include_in_schema=False)
def page() -> FileResponse:
    index = DIST / "index.html"
    if not index.is_file():
        raise NotFound("the dashboard is not built in this installation "
                       "(npm run build:dashboard writes market/dashboard/web/dist)")
    return FileResponse(index, media_type="text/html", headers=PAGE_HEADERS)


@router.get("/dashboard/assets/{name}", response_class=FileResponse, include_in_schema=False)
def asset(name: str) -> FileResponse:
    path = DIST / "assets" / name
    if not _ASSET_NAME.match(name) or not path.is_file():
        raise NotFound(f"no dashboard asset {name!r}")
    return FileResponse(path, media_type=_MEDIA.get(path.suffix, "application/octet-stream"),
                        headers={"X-Content-Type-Options": "nosniff"})


async def _read(call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` off the event loop; a chain node that cannot be reached is 503 (a page
    says the market is down), not a 500."""
    try:
        return await run_in_threadpool(call, *args)
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
            ConnectionError) as exc:
        raise ServiceUnavailable(f"the chain node cannot be reached: {exc}") from None


_turns: dict[tuple[int, int], asyncio.Semaphore] = {}
"""Per event loop (an app served in a test's thread runs its own) and concurrency."""


async def _page(runtime: Any, call: Callable[..., Any], *args: Any) -> Any:
    """A page that costs chain reads, computed at most ``dashboard_concurrency`` at a time per
    process: a flood of page requests (each within the per-IP rate) queues behind itself, and
    one that waits past ``dashboard_queue_s`` is 503, instead of taking the CPU settlement and
    the workers' routes need."""
    settings = runtime.settings
    key = (id(asyncio.get_running_loop()), settings.dashboard_concurrency)
    turns = _turns.get(key)
    if turns is None:
        turns = _turns[key] = asyncio.Semaphore(settings.dashboard_concurrency)
    try:
        await asyncio.wait_for(turns.acquire(), settings.dashboard_queue_s)
    except TimeoutError:
        raise ServiceUnavailable("the dashboard is busy: too many pages are being computed; "
                                 "retry in a few seconds") from None
    try:
        return await _read(call, runtime, *args)
    finally:
        turns.release()


def _job_id(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,19}", text):
        raise BadInput(f"{text!r} is not a job id (a whole number)")
    return int(text)


@router.get("/dashboard/api/overview", response_class=Response,
            responses={200: {"content": {"application/json": {}}}})
async def overview(runtime: Runtime) -> Response:
    # most fetches come in the same second as another page's: answered from what is kept,
    # with no thread hop; the first of the second computes it off the loop
    body = views.overview_kept(runtime)
    if body is None:
        body = await _read(views.overview_json, runtime)
    return Response(body, media_type="application/json")


@router.get("/dashboard/api/jobs/{job_id}")
async def job(job_id: str, runtime: Runtime) -> dict[str, Any]:
    return await _page(runtime, views.job_page, _job_id(job_id))


@router.get("/dashboard/api/groups/{group}")
async def group(group: str, runtime: Runtime) -> dict[str, Any]:
    if not re.fullmatch(r"[0-9a-f]{64}", group):
        raise BadInput(f"{group!r} is not a group id (64 lowercase hex digits)")
    return await _page(runtime, views.group_page, group)


@router.get("/dashboard/api/providers/{address}")
async def provider(address: str, runtime: Runtime, rows: str = str(views.PROVIDER_ROWS),
                   ) -> dict[str, Any]:
    if rows != "all" and not re.fullmatch(r"[0-9]{1,6}", rows):
        raise BadInput(f"rows must be a whole number or 'all', got {rows!r}")
    return await _page(runtime, views.provider_page, address,
                       None if rows == "all" else int(rows))


@router.get("/dashboard/api/verifiers/{address}")
async def verifier(address: str, runtime: Runtime) -> dict[str, Any]:
    return await _page(runtime, views.verifier_page, address)


@router.get("/dashboard/api/contracts")
async def contracts(runtime: Runtime) -> dict[str, Any]:
    return await _read(views.contracts_info, runtime)


@router.get("/dashboard/api/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def stream(runtime: Runtime, overview: bool = False) -> StreamingResponse:
    """Ticks; with ``overview=true`` also the overview itself each time the index moved (the
    overview page draws it from the stream instead of fetching it again)."""
    first = await _read(views.tick, runtime)  # a market that cannot answer says so up front
    return StreamingResponse(_ticks(runtime, first, overview), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _Ticker:
    """One reader of the tick per event loop and runtime, however many streams are open: each
    ``dashboard_tick_s`` it reads the tick once (off the loop) and wakes every open stream with
    it, so ten open dashboards cost one read a tick, not ten threadpool round trips. While a
    stream wants the overview, it also computes and encodes the overview once each time the
    index moved, and every such stream sends those same bytes. It runs while a stream listens
    and stops after the last one leaves."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self._listeners = 0
        self._overview_listeners = 0
        self._task: asyncio.Task[None] | None = None
        self._turn = 0
        self._value: dict[str, Any] = {}
        self._overview: tuple[int, bytes] | None = None
        self._moved = asyncio.Condition()

    def join(self, overview: bool) -> int:
        self._listeners += 1
        self._overview_listeners += overview
        if self._task is None or self._task.done():
            self._overview = None  # computed before a pause: the index may have moved since
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self._turn

    def leave(self, overview: bool) -> None:
        self._listeners -= 1
        self._overview_listeners -= overview

    async def after(self, turn: int) -> tuple[int, dict[str, Any], tuple[int, bytes] | None]:
        """The first tick read after ``turn``, its turn, and the last overview computed (the
        index head it was computed at, and its JSON)."""
        async with self._moved:
            await self._moved.wait_for(lambda: self._turn > turn)
            return self._turn, self._value, self._overview

    async def _run(self) -> None:
        period = self._runtime.settings.dashboard_tick_s
        while self._listeners > 0:
            await asyncio.sleep(period)
            overview = self._overview
            try:
                value = await _read(views.tick, self._runtime)
            except Exception as exc:  # noqa: BLE001 - the pages show it; the ticks go on
                value = {"stale": True, "error": str(exc)[:200]}
            if self._overview_listeners > 0 and "indexed" in value and (
                    overview is None or overview[0] != value["indexed"]):
                try:
                    overview = (value["indexed"],
                                await _read(views.overview_json, self._runtime))
                except Exception as exc:  # noqa: BLE001 - not pushed: the pages fetch it
                    log.warning("the dashboard overview could not be computed: %s", exc)
            async with self._moved:
                self._turn += 1
                self._value = value
                self._overview = overview
                self._moved.notify_all()


_tickers: dict[tuple[int, int], _Ticker] = {}
"""Per event loop (an app served in a test's thread runs its own) and runtime."""


def _ticker(runtime: Any) -> _Ticker:
    key = (id(asyncio.get_running_loop()), id(runtime))
    ticker = _tickers.get(key)
    if ticker is None:
        ticker = _tickers[key] = _Ticker(runtime)
    return ticker


async def _ticks(runtime: Any, first: dict[str, Any], overview: bool) -> AsyncIterator[bytes]:
    """``event: tick`` each ``dashboard_tick_s`` for ``dashboard_stream_s``; ``changed`` says
    the index moved since the last tick sent (false on the first: the page just fetched its
    view, and fetches it again itself when it reconnects). A tick that cannot be read says
    ``stale``. With ``overview``, a tick that says ``changed`` follows ``event: overview`` with
    the overview at the new head where it could be computed, and then says ``overview: true``
    (the page needs to fetch nothing); where it could not, the page fetches it as before."""
    ends = time.monotonic() + runtime.settings.dashboard_stream_s
    last = first["indexed"]
    yield _event("tick", {**first, "changed": False, "overview": False})
    ticker = _ticker(runtime)
    turn = ticker.join(overview)
    try:
        while time.monotonic() < ends:
            turn, now, computed = await ticker.after(turn)
            if "indexed" not in now:
                yield _event("tick", {**now, "changed": False, "overview": False})
                continue
            changed = now["indexed"] != last
            pushed = (overview and changed and computed is not None
                      and computed[0] == now["indexed"])
            if pushed:
                assert computed is not None
                yield b"event: overview\ndata: " + computed[1] + b"\n\n"
            yield _event("tick", {**now, "changed": changed, "overview": pushed})
            last = now["indexed"]
    finally:
        ticker.leave(overview)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
