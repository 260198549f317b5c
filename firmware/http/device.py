"""What the HTTP API needs of the device, and nothing more: the handlers and the metrics collector
depend on these protocols, not on the Service and its parts. A fake device for a handler test,
or a new part (a companion's opt-out, a commissioning page), fits in by providing them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from aiohttp import web

from ..commissioning import LiveView, ZoneFile
from ..config import Config
from ..counts import CountStore
from ..ota_agent import OtaAgent
from ..pipeline import PipelineStats
from ..privacy.audit import AuditLog
from ..privacy.companion import CompanionVerifier
from ..privacy.signage import Signage
from ..ringbuffer import RingBuffer
from ..status_view import Health
from ..thermal import ThermalMonitor


class PrivacyControls(Protocol):
    """The opt-out pause as the API drives and reports it (``privacy.controller``)."""

    @property
    def paused(self) -> bool: ...

    @property
    def optouts(self) -> int: ...

    @property
    def purges(self) -> Sequence[dict[str, Any]]: ...

    @property
    def signage(self) -> Signage | None: ...

    def paused_remaining(self) -> float | None: ...

    async def optout(self, source: str, *, pause_s: float | None = None,
                     labels: dict[str, Any] | None = None) -> dict[str, Any]: ...

    async def resume(self, source: str, *, labels: dict[str, Any] | None = None) -> bool: ...


class Device(Protocol):
    @property
    def config(self) -> Config: ...

    @property
    def boot_id(self) -> str: ...

    @property
    def zone_names(self) -> list[str]: ...

    @property
    def speed_unit(self) -> str: ...

    @property
    def vectors(self) -> RingBuffer: ...

    @property
    def counts(self) -> CountStore: ...  # line crossings, queue waits, occupancy

    @property
    def audit(self) -> AuditLog: ...

    @property
    def ota(self) -> OtaAgent: ...

    @property
    def privacy(self) -> PrivacyControls: ...

    @property
    def companions(self) -> CompanionVerifier: ...  # the opt-out companions paired with the board

    # read by the metrics collector
    @property
    def stats(self) -> PipelineStats: ...

    @property
    def thermal(self) -> ThermalMonitor: ...

    @property
    def watchdog_pings(self) -> int: ...

    @property
    def detector_name(self) -> str | None: ...

    def now(self) -> float: ...  # monotonic

    def wall(self) -> float: ...

    def uptime(self) -> float: ...

    def health(self) -> Health: ...

    def status(self) -> dict[str, Any]: ...

    # the commissioning view (http/ui.py): None while commissioning is off
    @property
    def commissioning(self) -> LiveView | None: ...

    @property
    def zone_file(self) -> ZoneFile: ...

    async def apply_zones(self, cfg: Config) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


SERVICE: web.AppKey[Device] = web.AppKey("service")  # the device behind the handlers of an app
