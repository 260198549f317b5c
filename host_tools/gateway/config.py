"""The gateway config: which camera boards to poll, what to keep and for how long, the decision
rules and where their actions go. Validated as strictly as board configs: unknown keys, wrong types
and out-of-range values are errors naming file, line and key (``firmware.config.parse_strict_yaml``).

Relative paths are relative to the config file. Secrets (device API tokens, webhook secrets, the
gateway's own API token, the MQTT password) are never written in the config itself: each is read
from a file (mode 0600) or an environment variable the config names.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from firmware.config import parse_strict_yaml
from firmware.errors import ConfigError

MAX_CONFIG_BYTES = 1024 * 1024
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Topic = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^#+\x00]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Strict):
    """Where a secret comes from: a file (first line, should be mode 0600) or an environment variable."""

    file: str | None = Field(default=None, min_length=1, max_length=4096)
    env: str | None = Field(default=None, pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")

    @model_validator(mode="after")
    def _one(self) -> SecretRef:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of file or env")
        return self


class GatewaySection(_Strict):
    name: Name = "store"
    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    # The gateway's own API token. Required when host is not a loopback address.
    token: SecretRef | None = None
    # The till's token for POST /v1/transactions (and only that route): the till system gets a
    # credential that can add sales data and read nothing. Without it (and without gateway.token)
    # no transactions are taken.
    till_token: SecretRef | None = None
    decisions_kept: int = Field(default=1000, ge=10, le=100_000)


class PollingSection(_Strict):
    interval_s: float = Field(default=1.0, gt=0, le=60)
    page_limit: int = Field(default=500, ge=1, le=1000)
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    backoff_max_s: float = Field(default=30.0, gt=0, le=600)
    stale_after_s: float = Field(default=10.0, gt=0, le=3600)
    max_response_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    # Each board's /v1/status is read this often for what the gateway shows besides vectors (the
    # opt-out companions paired with it and their last press); 0: never.
    status_s: float = Field(default=30.0, ge=0, le=3600)
    # Each board's counting lines and queues (/v1/counts: footfall, queue waits) are read this often; 0: never.
    counts_s: float = Field(default=10.0, ge=0, le=3600)


class DeviceSection(_Strict):
    name: Name
    url: str = Field(pattern=r"^https?://[^\s/]+(:\d+)?/?$", max_length=512)
    token: SecretRef
    # A device whose clock is known to be off can be given a fixed offset (seconds added to its times).
    clock_offset_s: float = Field(default=0.0, ge=-86400, le=86400)


class StoreSection(_Strict):
    # Vectors and per-session summaries are kept this long, in RAM and (if set) in SQLite.
    retention_s: int = Field(default=3600, ge=60, le=86400)
    bucket_s: int = Field(default=60, ge=10, le=3600)
    sqlite: str | None = Field(default=None, min_length=1, max_length=4096)
    # Hourly visitor counts (no tokens) for "slow hour" baselines; kept this many days.
    history_days: int = Field(default=56, ge=1, le=400)
    purge_interval_s: float = Field(default=10.0, gt=0, le=3600)
    # With sqlite: decisions (rule, zone or "store", counts, explanation, what each output did; no
    # session tokens) are kept this many days, so /v1/decisions and the cooldowns survive a restart.
    decisions_days: int = Field(default=30, ge=1, le=400)


# -- rules ------------------------------------------------------------------------------------------
class EngagedWhen(_Strict):
    """A visitor engaged with a display: engagement >= min for >= for_s of consecutive windows."""

    kind: Literal["engaged"]
    zone: Name
    min_engagement: float = Field(default=0.7, ge=0, le=1)
    for_s: float = Field(default=20.0, gt=0, le=3600)
    max_gap_s: float = Field(default=3.0, ge=0, le=60)


class SlowTrafficWhen(_Strict):
    """Store traffic (footfall per hour: people in through the boards' entrance lines, measured over
    window_s; distinct sessions while no board has an entrance line) below a percentile of the same
    weekday and hour in the history; needs min_samples past hours to compare with."""

    kind: Literal["slow_traffic"]
    percentile: float = Field(default=25.0, gt=0, lt=100)
    window_s: int = Field(default=900, ge=10, le=86400)
    min_samples: int = Field(default=3, ge=1, le=1000)
    zone: Name | None = None


class ShareWhen(_Strict):
    """A share of a zone's recent visitors crossed a line: dwell satisfaction below ``below``
    (low_satisfaction) or approach/avoid below ``below`` (avoidance), for >= share of at least
    min_visitors visitors over the last over_s."""

    kind: Literal["low_satisfaction", "avoidance"]
    zone: Name
    below: float = Field(default=0.3, ge=-1, le=1)
    share: float = Field(default=0.3, gt=0, le=1)
    over_s: int = Field(default=900, ge=10, le=86400)
    min_visitors: int = Field(default=5, ge=1, le=100_000)


class LowConversionWhen(_Strict):
    """Footfall is normal (at or above the ``footfall_percentile`` of the same weekday and hour; null:
    whatever it is) but conversion (transactions / footfall over window_s, at ``zone``'s tills when
    set) is below the ``percentile`` of that hour's conversion on past days (>= min_samples of them)."""

    kind: Literal["low_conversion"]
    window_s: int = Field(default=3600, ge=60, le=86400)
    percentile: float = Field(default=25.0, gt=0, lt=100)
    footfall_percentile: float | None = Field(default=25.0, ge=0, lt=100)
    min_footfall: int = Field(default=10, ge=1, le=1_000_000)
    min_samples: int = Field(default=3, ge=1, le=1000)
    zone: Name | None = None


class QueueWhen(_Strict):
    """A queue zone's longest queue over the last over_s above ``max_length``, or the mean wait of the
    people who left it above ``max_wait_s``."""

    kind: Literal["queue_alert"]
    zone: Name
    max_length: int | None = Field(default=None, ge=1, le=1000)
    max_wait_s: float | None = Field(default=None, gt=0, le=7200)
    over_s: int = Field(default=120, ge=60, le=3600)

    @model_validator(mode="after")
    def _limit(self) -> QueueWhen:
        if self.max_length is None and self.max_wait_s is None:
            raise ValueError("a queue_alert needs max_length or max_wait_s (or both)")
        return self


When = Annotated[EngagedWhen | SlowTrafficWhen | ShareWhen | LowConversionWhen | QueueWhen,
                 Field(discriminator="kind")]


class Action(_Strict):
    output: Name  # "log", "mqtt" or a webhook's name
    topic: Topic | None = None  # mqtt: below the gateway's topic prefix
    payload: dict[str, Any] = Field(default_factory=dict)


class Rule(_Strict):
    name: Name
    description: str = Field(default="", max_length=500)
    when: When
    then: list[Action] = Field(min_length=1, max_length=8)
    # After firing, the rule stays quiet this long for the same subject (zone, or the whole store).
    cooldown_s: float = Field(default=300.0, ge=0, le=86400)
    enabled: bool = True


# -- outputs ----------------------------------------------------------------------------------------
class RateLimit(_Strict):
    per_minute: float = Field(default=6.0, gt=0, le=6000)
    burst: int = Field(default=3, ge=1, le=1000)


class MqttOutput(_Strict):
    host: str = Field(default="127.0.0.1", min_length=1, max_length=255)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = Field(default=None, max_length=255)
    password: SecretRef | None = None
    topic_prefix: Topic = "cuecam"
    qos: Literal[0, 1, 2] = 1
    # Publish the store state (per-zone aggregates, no tokens) retained every this many seconds; 0: never.
    publish_state_s: float = Field(default=10.0, ge=0, le=3600)
    rate_limit: RateLimit = RateLimit()


class WebhookOutput(_Strict):
    name: Name
    url: str = Field(pattern=r"^https?://\S+$", max_length=2048)
    secret: SecretRef
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    retries: int = Field(default=2, ge=0, le=10)
    rate_limit: RateLimit = RateLimit()


class LogOutput(_Strict):
    enabled: bool = True
    rate_limit: RateLimit = RateLimit(per_minute=60, burst=20)


class OutputsSection(_Strict):
    log: LogOutput = LogOutput()
    mqtt: MqttOutput | None = None
    webhooks: list[WebhookOutput] = Field(default_factory=list, max_length=32)


class GatewayConfig(_Strict):
    version: Literal[1]
    gateway: GatewaySection = GatewaySection()
    devices: list[DeviceSection] = Field(min_length=1, max_length=256)
    polling: PollingSection = PollingSection()
    store: StoreSection = StoreSection()
    rules: list[Rule] = Field(default_factory=list, max_length=256)
    outputs: OutputsSection = OutputsSection()

    @model_validator(mode="after")
    def _cross(self) -> GatewayConfig:
        def unique(names: list[str], what: str) -> None:
            seen: set[str] = set()
            for n in names:
                if n in seen:
                    raise ValueError(f"two {what} are named {n!r}")
                seen.add(n)

        unique([d.name for d in self.devices], "devices")
        unique([d.url.rstrip("/") for d in self.devices], "devices' urls")
        unique([r.name for r in self.rules], "rules")
        hooks = [w.name for w in self.outputs.webhooks]
        unique(hooks, "webhooks")
        for w in hooks:
            if w in ("log", "mqtt"):
                raise ValueError(f"a webhook cannot be named {w!r} (an output of its own)")
        known = {"log", *hooks} | ({"mqtt"} if self.outputs.mqtt else set())
        for r in self.rules:
            for a in r.then:
                if a.output not in known:
                    raise ValueError(f"rule {r.name!r}: output {a.output!r} is not configured (known: {sorted(known)})")
                if a.output == "log" and not self.outputs.log.enabled:
                    raise ValueError(f"rule {r.name!r}: output 'log' is disabled in outputs.log")
                if a.topic is not None and a.output != "mqtt":
                    raise ValueError(f"rule {r.name!r}: topic is only for the mqtt output")
        if not _is_loopback(self.gateway.host) and self.gateway.token is None:
            raise ValueError(f"gateway.host {self.gateway.host!r} is not loopback: set gateway.token "
                             "(the gateway API is never served on the network without one)")
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class LoadedGatewayConfig:
    config: GatewayConfig
    path: Path

    def resolve(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.path.parent / q)

    def secret(self, ref: SecretRef, what: str, env: dict[str, str] | None = None) -> str:
        environ = os.environ if env is None else env
        if ref.env is not None:
            value = environ.get(ref.env, "")
            if not value:
                raise ConfigError(f"{self.path}: {what}: environment variable {ref.env} is not set")
        else:
            assert ref.file is not None
            f = self.resolve(ref.file)
            try:
                value = f.read_bytes()[:4096].decode("utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"{self.path}: {what}: cannot read {f}: {e}") from e
            if not value:
                raise ConfigError(f"{self.path}: {what}: {f} is empty")
        if not re.fullmatch(r"[\x21-\x7e]{8,256}", value):
            raise ConfigError(f"{self.path}: {what}: must be 8-256 printable characters without spaces")
        return value


def parse_gateway_config(text: str, path: Path) -> LoadedGatewayConfig:
    cfg, _lines = parse_strict_yaml(
        text, str(path), GatewayConfig, what="gateway config",
        empty_hint="see host_tools/gateway/example.yaml for an example",
        keys_hint="version, gateway, devices, polling, store, rules, outputs",
    )
    return LoadedGatewayConfig(cfg, path)


def load_gateway_config(path: str | Path) -> LoadedGatewayConfig:
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the gateway config: {e.strerror or e}") from e
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: larger than {MAX_CONFIG_BYTES} bytes; not a gateway config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text: {e}") from e
    return parse_gateway_config(text, p)
