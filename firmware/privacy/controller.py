"""The privacy controller: the opt-out pause as one state machine with one owner, and retention.

Every transition (an opt-out from the button, the API or any other signage; a resume by a second
press, a long press, the API or the pause running out) goes through ``optout`` / ``resume`` and is
applied under one lock, in the order the commands came. While a transition waits (for the
analysis thread to forget its tracks, for the audit log to reach the disk), the next one waits
for it, so the pipeline, the LED, the pause and /health can never disagree: there is no moment
where a resume has set the pipeline measuring and an opt-out, finishing after it, marks the board
paused. A pause's timer carries the number of the transition that started it; a later press
restarts the pause with a timer of its own, and the old one, should it fire anyway, finds itself
stale and does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..config import PrivacyConfig
from ..counts import CountStore
from ..ringbuffer import RingBuffer
from .audit import AuditLog
from .signage import Signage

log = logging.getLogger("cuecam")
RETENTION_TICK_S = 0.25


class Measuring(Protocol):
    """What the controller pauses (the pipeline)."""

    @property
    def measuring(self) -> bool: ...

    async def pause(self) -> tuple[int, int]: ...  # (frames dropped, tracks forgotten)

    def resume(self) -> None: ...


class PrivacyController:
    def __init__(self, cfg: PrivacyConfig, *, pipeline: Measuring, vectors: RingBuffer, audit: AuditLog,
                 clock: Callable[[], float], wall_clock: Callable[[], float], counts: CountStore | None = None) -> None:
        self.cfg = cfg
        self.pipeline = pipeline
        self.vectors = vectors
        self.counts = counts  # line crossings, queue waits, occupancy samples: purged and expired alike
        self.audit = audit
        self.now = clock
        self.wall = wall_clock
        self.signage: Signage | None = None
        self.optouts = 0
        self.last_optout: dict[str, Any] | None = None
        # The last purges as readers of /v1/vectors see them (n, purged from, pressed at; wall
        # clock), so a gateway that already took those vectors forgets them too.
        self.purges: deque[dict[str, Any]] = deque(maxlen=8)
        self.expired = 0  # vectors purged by retention
        # What else holds anything about people (the commissioning view's paths and traffic map):
        # each is called with the pipeline's purge, before the opt-out answers.
        self.purgers: list[Callable[[], int]] = []
        self.expirers: list[Callable[[], None]] = []  # ...and each drops what is older than the retention
        self._paused_until: float | None = None  # monotonic; None: measuring
        self._transitions = 0  # every transition applied; a pause's timer knows the one that started it
        self._lock = asyncio.Lock()  # FIFO: transitions apply in the order they were asked for
        self._timer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    # -- state ---------------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self._paused_until is not None

    def paused_remaining(self) -> float | None:
        if self._paused_until is None:
            return None
        return max(self._paused_until - self.now(), 0.0)

    # -- the signage -----------------------------------------------------------------------------
    def attach(self, signage: Signage) -> None:
        self.signage = signage

    def button_pressed(self) -> None:
        """A press: opt-out, or a resume when paused and button.resume is second_press. Decided
        when the press is applied (after any transition still running), not when it came."""
        self._spawn(self._press())

    def button_held(self) -> None:
        """A long press: a resume when paused and button.resume is long_press."""
        self._spawn(self._hold())

    async def _press(self) -> None:
        async with self._lock:
            if self.paused and self.cfg.optout.button.resume == "second_press":
                await self._resume_locked("button")
            else:
                await self._optout_locked("button")

    async def _hold(self) -> None:
        async with self._lock:
            if self.paused and self.cfg.optout.button.resume == "long_press":
                await self._resume_locked("button")

    # -- transitions -----------------------------------------------------------------------------
    async def optout(self, source: str, *, pause_s: float | None = None,
                     labels: dict[str, Any] | None = None) -> dict[str, Any]:
        """Pause measuring and purge, at once: frames in flight dropped, every track and pending
        window forgotten, the vectors of the look-back (default: all) zeroed; the pause lasts
        privacy.optout.pause_s (``pause_s``: what is left of it, for a press that reached the
        board late). A press while paused purges again and restarts the pause. ``labels``: more
        fields for the audit entry (a companion's name and counters)."""
        async with self._lock:
            return await self._optout_locked(source, pause_s, labels)

    async def resume(self, source: str, *, labels: dict[str, Any] | None = None) -> bool:
        """End a pause early (or when it runs out). False when not paused."""
        async with self._lock:
            return await self._resume_locked(source, labels)

    async def _optout_locked(self, source: str, pause_s: float | None = None,
                             labels: dict[str, Any] | None = None) -> dict[str, Any]:
        self._transitions += 1
        t0 = self.now()
        frames, tracks = await self.pipeline.pause()
        for purge in self.purgers:
            purge()
        lookback = self.cfg.optout.lookback_s
        t_wall = self.wall()  # for people reading it; the purge itself runs on the monotonic clock
        # readers (the gateway) forget by sequence numbers, which no clock jump can shift: every
        # vector of this boot from seq_from to seq_to (the newest; windows still open are dropped)
        seq_to = self.vectors.newest_seq
        cutoff = None if lookback is None else self.now() - lookback
        if cutoff is None:
            seq_from, vectors = 1, self.vectors.clear()
        else:
            seq_from = self.vectors.first_seq_from(cutoff, field="t_mono")
            vectors = self.vectors.purge_since(cutoff, field="t_mono")
        # the counts of the look-back too: a crossing has no identity, but alone in its minute it is them
        counts = 0 if self.counts is None else self.counts.purge(cutoff, t_wall, self.now())
        pause_s = self.cfg.optout.pause_s if pause_s is None else pause_s
        self._paused_until = self.now() + pause_s
        self._start_timer(pause_s)
        if self.signage is not None:
            self.signage.show(paused=True)
        latency_ms = (self.now() - t0) * 1000.0
        self.optouts += 1
        self.purges.append({"n": self.optouts, "seq_from": seq_from, "seq_to": seq_to,
                            "since": 0.0 if lookback is None else round(t_wall - lookback, 3), "t": round(t_wall, 3)})
        self.last_optout = {"source": source, "latency_ms": round(latency_ms, 2),
                            "purged": {"vectors": vectors, "tracks": tracks, "frames": frames, "counts": counts}}
        result = {"paused": True, "remaining_s": round(pause_s, 3), **self.last_optout}
        # appended and fsynced off the event loop; under the lock, so the log's order is the board's
        await asyncio.to_thread(self.audit.append, "optout", source, vectors=vectors, tracks=tracks, frames=frames,
                                pause_s=round(pause_s, 3), **(labels or {}))
        log.info("opt-out (%s): paused %.0f s; purged %d vectors, %d tracks, %d frames in %.1f ms",
                 source, pause_s, vectors, tracks, frames, latency_ms)
        return result

    async def _resume_locked(self, source: str, labels: dict[str, Any] | None = None) -> bool:
        if self._paused_until is None:
            return False
        self._transitions += 1
        self._paused_until = None
        self._stop_timer()
        self.pipeline.resume()
        if self.signage is not None:
            self.signage.show(paused=False)
        await asyncio.to_thread(self.audit.append, "resume", source, **(labels or {}))
        log.info("measuring again (%s)", source)
        return True

    def _start_timer(self, seconds: float) -> None:
        self._stop_timer()
        self._timer = asyncio.create_task(self._run_out(self._transitions, seconds), name="cuecam-resume")

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        self._timer = None

    async def _run_out(self, started_by: int, seconds: float) -> None:
        await asyncio.sleep(seconds)
        async with self._lock:
            if self._transitions != started_by:
                return  # a later transition replaced this pause (or ended it): not ours to end
            self._timer = None  # finishing: not to be cancelled by the resume it makes
            await self._resume_locked("schedule")

    # -- retention -------------------------------------------------------------------------------
    def expire(self) -> int:
        """Zero the vectors older than privacy.retention_s; on the monotonic clock, so a wall-clock
        jump (NTP after a boot without RTC) expires nothing early."""
        cutoff = self.now() - self.cfg.retention_s
        n = self.vectors.expire(cutoff, field="t_mono")
        if self.counts is not None:
            self.counts.expire(cutoff)
        self.expired += n
        for expire in self.expirers:
            expire()
        return n

    async def run_retention(self) -> None:
        """Vectors older than privacy.retention_s are zeroed within RETENTION_TICK_S."""
        while True:
            self.expire()
            await asyncio.sleep(RETENTION_TICK_S)

    # -- lifecycle -------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Cancel the timer and the presses still waiting. Never raises."""
        for t in (self._timer, *self._background):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        if self.signage is not None:
            self.signage.close()

    def status(self) -> dict[str, Any]:
        remaining = self.paused_remaining()
        return {
            "paused": self.paused,
            "paused_remaining_s": None if remaining is None else round(remaining, 2),
            "optouts": self.optouts,
            "last_optout": self.last_optout,
            "retention_s": self.cfg.retention_s,
            "expired_vectors": self.expired,
        }
