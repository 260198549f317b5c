"""Simulated camera boards for load tests of the gateway: the firmware's own vectors route,
ring buffer, serializer and bearer auth, fed with made-up vectors at a set rate instead of a camera
and models (a real board costs a core; 32 of them do not fit one test machine).

Each board keeps a count of what it produced, so a test can hold the gateway to exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
from aiohttp import web

from firmware.http.app import SERVICE, TOKEN, bearer_auth, errors_as_json, vectors
from firmware.http.auth import Token
from firmware.ringbuffer import RingBuffer
from firmware.signals.schema import VECTOR_DTYPE

ZONES = ["plaza-sign", "walkway"]


@dataclass
class SimBoard:
    name: str
    rate: float  # vectors per second
    capacity: int = 20000
    seed: int = 0

    def __post_init__(self) -> None:
        self.token = secrets.token_urlsafe(32)
        self.boot_id = secrets.token_hex(8)
        self.vectors = RingBuffer(VECTOR_DTYPE, self.capacity)
        self.purges: list[dict[str, Any]] = []  # a simulated board has no opt-out button
        self.privacy = SimpleNamespace(purges=self.purges)  # what /v1/vectors reads of the controller
        self.zone_names = list(ZONES)
        self.speed_unit = "person_heights/s"
        self.config = SimpleNamespace(api=SimpleNamespace(max_limit=1000))
        self.produced = 0
        self.rng = np.random.default_rng(self.seed)
        self.runner: web.AppRunner | None = None
        self.port = 0
        self._task: asyncio.Task[None] | None = None
        self._people = [secrets.token_hex(16) for _ in range(8)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def produce(self, n: int = 1) -> None:
        now = time.time()
        for _ in range(n):
            r = self.rng.random(4)
            i = int(self.rng.integers(len(self._people)))
            if r[0] < 0.05:  # people come and go: new random tokens
                self._people[i] = secrets.token_hex(16)
            self.vectors.append(t_wall=now, t_start=now - 2.0, t_end=now, token=self._people[i].encode(),
                                zone=int(r[1] < 0.5), dwell_s=float(r[2] * 30), engagement=float(r[3]),
                                engagement_conf=0.8, satisfaction=float(r[1] * 2 - 1), satisfaction_conf=0.7,
                                approach=float(r[2] * 2 - 1), approach_conf=0.6, speed=0.3, frames=20,
                                orientation=1, exit=0)
            self.produced += 1

    async def start(self) -> None:
        app = web.Application(middlewares=[errors_as_json, bearer_auth])
        app[SERVICE] = self  # type: ignore[misc,assignment]
        app[TOKEN] = Token(self.token, "sim")
        app.router.add_get("/v1/vectors", vectors)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.port = int(self.runner.addresses[0][1])

    def start_producing(self) -> None:
        self._task = asyncio.create_task(self._produce_loop(), name=f"sim-{self.name}")

    async def _produce_loop(self) -> None:
        period = 1.0 / self.rate
        nxt = time.monotonic()
        while True:
            nxt += period
            self.produce()
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))

    async def stop_producing(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def restart(self) -> None:
        """As a board restarting: new boot, empty buffer, seq from 1 again (the port stays)."""
        self.boot_id = secrets.token_hex(8)
        self.vectors = RingBuffer(VECTOR_DTYPE, self.capacity)

    async def stop(self) -> None:
        await self.stop_producing()
        if self.runner is not None:
            await self.runner.cleanup()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "produced": self.produced, "boot_id": self.boot_id}
