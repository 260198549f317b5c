"""Polling one camera board: ``GET /v1/vectors?since=<cursor>`` with its token, page after page.

The cursor is the store's (device, boot_id, highest seq taken), so it only moves once a page is
taken (and, with SQLite, committed). A board that restarted answers with a new ``boot_id``: its
buffer and seq numbers started again, so that answer is dropped and the board is read again from
``since=0``. Errors back off exponentially (capped at ``polling.backoff_max_s``); a board not heard
from for ``stale_after_s`` is marked stale (state and metrics), and picked up again when it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from firmware.histogram import Histogram

from .config import PollingSection
from .sales import SalesStore
from .store import Rec, Store, rec_from_json

log = logging.getLogger("cuecam.gateway.devices")
BOOT_ID = re.compile(r"^[0-9a-f]{16}$")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class DeviceProtocolError(Exception):
    """The board answered, but not with what the vectors API promises."""


@dataclass
class DeviceState:
    name: str
    url: str
    state: str = "starting"  # starting | ok | stale | unauthorized
    error: str | None = None
    last_ok: float | None = None  # monotonic
    last_ok_wall: float | None = None
    polls: int = 0
    errors: int = 0
    rejected: int = 0  # vectors in a page that did not parse
    latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=200))  # recent poll round trips
    # the opt-out companions paired with the board, from its /v1/status (None: not read yet)
    companions: list[dict[str, Any]] | None = None

    def to_json(self, now: float, cursor: Any) -> dict[str, Any]:
        lat = sorted(self.latency_ms)
        return {"name": self.name, "url": self.url, "state": self.state, "error": self.error,
                "last_ok_s_ago": None if self.last_ok is None else round(now - self.last_ok, 2),
                "polls": self.polls, "errors": self.errors, "rejected": self.rejected,
                "boot_id": cursor.boot, "cursor": cursor.seq, "vectors": cursor.taken, "lost": cursor.lost,
                "optouts_seen": cursor.purges_seen, "forgotten": cursor.forgotten,
                "restarts_seen": max(0, cursor.boots - 1),
                "poll_ms_p50": round(lat[len(lat) // 2], 1) if lat else None,
                "poll_ms_p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1) if lat else None,
                "companions": self.companions}


class DevicePoller:
    def __init__(self, name: str, url: str, token: str, polling: PollingSection, store: Store,
                 on_new: Callable[[list[Rec]], Awaitable[None]], session: aiohttp.ClientSession, *,
                 clock_offset_s: float = 0.0, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic, sales: SalesStore | None = None) -> None:
        self.name = name
        self.base = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.polling = polling
        self.store = store
        self.on_new = on_new
        self.session = session
        self.offset = clock_offset_s
        self.wall = wall
        self.mono = monotonic
        self.state = DeviceState(name, self.base)
        self.started = monotonic()
        # cumulative poll round-trip histogram (LATENCY_BUCKETS, then +Inf) and sum, for /metrics
        self.latency = Histogram(LATENCY_BUCKETS)
        self._next_status = 0.0  # monotonic: when /v1/status is read next
        self.sales = sales  # where the board's counting lines and queues go (/v1/counts)
        self._next_counts = 0.0
        self.counts_taken = 0  # buckets

    async def _page(self, since: int) -> dict[str, Any]:
        url = f"{self.base}/v1/vectors"
        params = {"since": str(since), "limit": str(self.polling.page_limit)}
        t0 = self.mono()
        async with self.session.get(url, params=params, headers=self.headers,
                                    timeout=aiohttp.ClientTimeout(total=self.polling.timeout_s)) as resp:
            body = await resp.content.read(self.polling.max_response_bytes + 1)
            if len(body) > self.polling.max_response_bytes:
                raise DeviceProtocolError(f"response larger than {self.polling.max_response_bytes} bytes")
            if resp.status == 401:
                self.state.state = "unauthorized"
                raise DeviceProtocolError("401: the device refused the token")
            if resp.status != 200:
                raise DeviceProtocolError(f"HTTP {resp.status}: {body[:200].decode('utf-8', 'replace')}")
        dt = self.mono() - t0
        self.state.latency_ms.append(dt * 1000)
        self.latency.observe(dt)
        try:
            page = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise DeviceProtocolError(f"not JSON: {e}") from e
        if not isinstance(page, dict) or page.get("schema") != 1 or not isinstance(page.get("vectors"), list):
            raise DeviceProtocolError("not a schema 1 vectors page")
        boot, cursor, lost = page.get("boot_id"), page.get("cursor"), page.get("lost", 0)
        if not isinstance(boot, str) or not BOOT_ID.match(boot):
            raise DeviceProtocolError("the page has no boot_id (firmware too old for this gateway?)")
        if not isinstance(cursor, int) or not isinstance(lost, int) or cursor < 0 or lost < 0:
            raise DeviceProtocolError("bad cursor or lost count")
        return page

    async def poll_status(self) -> None:
        """The board's paired companions and their last press, from /v1/status. A board that does
        not answer it (older firmware, a simulated board) keeps what was read last; never raises."""
        self._next_status = self.mono() + self.polling.status_s
        try:
            async with self.session.get(f"{self.base}/v1/status", headers=self.headers,
                                        timeout=aiohttp.ClientTimeout(total=self.polling.timeout_s)) as resp:
                body = await resp.content.read(STATUS_MAX_BYTES + 1)
                if resp.status != 200 or len(body) > STATUS_MAX_BYTES:
                    return
            listed = orjson.loads(body).get("privacy", {}).get("companions")
        except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError, AttributeError) as e:
            log.debug("%s: /v1/status: %s", self.name, e)
            return
        if isinstance(listed, list):
            self.state.companions = [c for c in map(_companion, listed[:32]) if c is not None]

    async def poll_counts(self) -> None:
        """The board's counting lines and queues (/v1/counts, every bucket it holds) into the sales
        store. A board without them (older firmware, a simulated board) answers 404: nothing to
        take; never raises."""
        self._next_counts = self.mono() + self.polling.counts_s
        assert self.sales is not None
        try:
            async with self.session.get(f"{self.base}/v1/counts", params={"since": "0"}, headers=self.headers,
                                        timeout=aiohttp.ClientTimeout(total=self.polling.timeout_s)) as resp:
                body = await resp.content.read(self.polling.max_response_bytes + 1)
                if resp.status != 200 or len(body) > self.polling.max_response_bytes:
                    return
            page = orjson.loads(body)
            boot = page["boot_id"]
            if not isinstance(boot, str) or not BOOT_ID.match(boot):
                raise ValueError("bad boot_id")
            self.counts_taken += await self.sales.take_counts(self.name, boot, page, self.offset)
        except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError) as e:
            log.debug("%s: /v1/counts: %s", self.name, e)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            self.state.rejected += 1
            log.warning("%s: /v1/counts answer not understood: %r", self.name, e)

    async def poll_once(self) -> bool:
        """One page; True if the board said there is more right away."""
        cur = self.store.cursor(self.name)
        page = await self._page(cur.seq if cur.boot is not None else 0)
        boot = page["boot_id"]
        if cur.boot is not None and boot != cur.boot:
            log.warning("%s restarted (boot %s -> %s): reading its new buffer from the start", self.name, cur.boot, boot)
            if cur.seq != 0:
                page = await self._page(0)
                boot = page["boot_id"]
        self.store.switch_boot(self.name, boot)
        await self._apply_purges(boot, page.get("purges"))
        now = self.wall()
        recs: list[Rec] = []
        for v in page["vectors"]:
            try:
                recs.append(rec_from_json(self.name, boot, v, now, self.offset))
            except (KeyError, TypeError, ValueError, AttributeError):
                self.state.rejected += 1
        if recs and len(recs) != len(page["vectors"]):
            log.warning("%s: %d malformed vectors skipped", self.name, len(page["vectors"]) - len(recs))
        # "lost" only counts on a continuing cursor: a reader starting at 0 did not lose what expired before it
        lost = int(page["lost"]) if cur.boot == boot and cur.seq > 0 else 0
        new = await self.store.ingest(self.name, boot, recs, cursor=page["cursor"], lost=lost)
        if new:
            await self.on_new(new)
        return bool(page.get("more"))

    async def _apply_purges(self, boot: str, purges: Any) -> None:
        """A shopper pressed the board's opt-out button: what the board purged, the gateway forgets
        (before it takes the page, so vectors made after the pause are kept)."""
        if not isinstance(purges, list):
            raise DeviceProtocolError("the page has no purges list (firmware too old for this gateway?)")
        cur = self.store.cursor(self.name)
        seen = cur.purges_seen
        fresh = [p for p in purges if isinstance(p, dict) and isinstance(p.get("n"), int) and p["n"] > seen]
        if not fresh:
            return
        try:
            spans = [(int(p["seq_from"]), int(p["seq_to"])) for p in fresh]
        except (KeyError, TypeError, ValueError) as e:
            raise DeviceProtocolError(f"bad purges entry (firmware too old for this gateway?): {e}") from e
        if min(p["n"] for p in fresh) > seen + 1:
            spans.append((1, max(hi for _lo, hi in spans)))  # purges were missed: forget all up to the last
        n = 0
        for lo, hi in spans:
            n += await self.store.forget(self.name, boot, lo, hi)
        cur.purges_seen = max(p["n"] for p in fresh)
        log.info("%s: opt-out on the board; forgot %d vectors the gateway held from it", self.name, n)

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self.polling.interval_s
        while not stop.is_set():
            try:
                more = await self.poll_once()
            except (TimeoutError, aiohttp.ClientError, OSError, DeviceProtocolError) as e:
                self.state.errors += 1
                self.state.error = f"{type(e).__name__}: {e}"[:300]
                since_ok = self.mono() - (self.state.last_ok or self.started)
                if self.state.state != "unauthorized":
                    self.state.state = "stale" if since_ok >= self.polling.stale_after_s else self.state.state
                backoff = min(backoff * 2, self.polling.backoff_max_s)
                await _sleep(stop, backoff)
                continue
            self.state.polls += 1
            if self.state.state != "ok":
                log.info("%s: ok (%s)", self.name, self.base)
            self.state.state, self.state.error = "ok", None
            self.state.last_ok, self.state.last_ok_wall = self.mono(), self.wall()
            backoff = self.polling.interval_s
            if self.polling.status_s and self.mono() >= self._next_status:
                await self.poll_status()
            if self.sales is not None and self.polling.counts_s and self.mono() >= self._next_counts:
                await self.poll_counts()
            if not more:
                await _sleep(stop, self.polling.interval_s)


STATUS_MAX_BYTES = 256 * 1024
COMPANION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")


def _companion(c: Any) -> dict[str, Any] | None:
    """One companion of a board's status, the fields the gateway shows, checked."""
    if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not COMPANION_NAME.match(c["name"]):
        return None

    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    return {"name": c["name"], "presses": int(num(c.get("presses")) or 0), "last_press_t": num(c.get("last_press_t")),
            "last_action": c.get("last_action") if c.get("last_action") in ("optout", "resume") else None,
            "refusals": int(num(c.get("refusals")) or 0)}


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
