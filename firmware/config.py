"""Strict, typed board configuration.

A board config is YAML parsed with ``yaml.safe_load`` and validated into pydantic models that
forbid unknown keys. Every problem is reported as ``file:line: key: message`` so an integrator can
fix it without reading code. Relative paths inside a config resolve against the config file's
own directory, so a config works from any working directory.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)

MAX_CONFIG_BYTES = 64 * 1024

BoardKind = Literal["sim", "rpi4", "rpi5", "rpi-zero2w", "rpi5-coral-usb", "rpi4-coral-usb", "rpi-zero2w-aicam",
                    "rpi5-aicam", "rpi4-aicam", "rpi5-hailo"]
Size = Annotated[list[Annotated[int, Field(ge=16, le=8192)]], Field(min_length=2, max_length=2)]


def _unique(what: str, names: list[str]) -> None:
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} names must be unique: {', '.join(dup)}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BoardConfig(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: BoardKind


class ReplayCameraConfig(_Strict):
    """Replay a video file or a directory of images as if it were a camera."""

    type: Literal["replay"]
    source: str = Field(min_length=1, max_length=4096)
    pacing: Literal["realtime", "fast"] = "realtime"
    loop: bool = True
    fps: Annotated[float, Field(gt=0, le=120)] | None = None
    max_frame_pixels: int = Field(default=4096 * 4096, ge=64 * 64, le=8192 * 8192)


class SyntheticCameraConfig(_Strict):
    """Programmable scenes of moving figures, for tests and demos without footage."""

    type: Literal["synthetic"]
    size: Size = [640, 480]
    fps: float = Field(default=10.0, gt=0, le=120)
    people: int = Field(default=3, ge=0, le=32)
    seed: int = Field(default=0, ge=0)
    frames: int | None = Field(default=None, ge=1)
    pacing: Literal["realtime", "fast"] = "realtime"
    # A scene file (firmware/camera/scenes/*.yaml): real cut-out people on scripted paths. When
    # set, people and seed are ignored and the frame size and rate come from the scene file.
    scene: str | None = Field(default=None, min_length=1, max_length=4096)


VC4_BOARDS = frozenset({"rpi4", "rpi-zero2w", "rpi4-coral-usb", "rpi-zero2w-aicam", "rpi4-aicam"})  # lores: YUV420 only
PCIE_BOARDS = frozenset({"rpi5", "rpi5-hailo", "rpi5-coral-usb", "rpi5-aicam"})  # a PCIe slot: the Hailo AI Kit / HAT+


class PicameraConfig(_Strict):
    """A Raspberry Pi camera through picamera2: inference reads the lores stream (firmware/camera/picam.py)."""

    type: Literal["picamera2"]
    camera_num: int = Field(default=0, ge=0, le=7)
    # The sensor mode (its output size) the ISP scales down to lores: it decides the field of
    # view. None: the mode with the widest field of view that runs at the frame rate.
    sensor_size: Size | None = None
    lores: Size = [320, 240]
    # picamera2's names (DRM fourcc order): BGR888 is R, G, B in memory (no conversion at all),
    # RGB888 is B, G, R (flipped), YUV420 is I420 (converted; the only lores format on VC4).
    lores_format: Literal["YUV420", "BGR888", "RGB888"] = "YUV420"
    framerate: float = Field(default=10.0, gt=0, le=120)
    hflip: bool = False
    vflip: bool = False
    buffer_count: int = Field(default=4, ge=2, le=8)
    # capture_request(wait=...): a wedged sensor is a camera fault after this long, no thread left blocked
    capture_timeout_s: float = Field(default=2.0, gt=0, le=60)

    @model_validator(mode="before")
    @classmethod
    def _no_resolution(cls, data: Any) -> Any:
        if isinstance(data, dict) and "resolution" in data:
            raise ValueError("camera.resolution is gone: no full-size main stream is allocated any more; "
                             "choose the field of view with camera.sensor_size (a sensor mode) or leave it out")
        return data

    @field_validator("lores")
    @classmethod
    def _lores_aligned(cls, v: list[int]) -> list[int]:
        if v[0] % 64:
            # A lores width that is not a multiple of 64 gets row padding (stride) and the
            # chroma planes of YUV420 no longer line up when cropped.
            raise ValueError("lores width must be a multiple of 64 (e.g. 320, 384, 640)")
        if v[1] % 2:
            raise ValueError("lores height must be even")
        return v


class Imx500CameraConfig(_Strict):
    """The Raspberry Pi AI Camera (Sony IMX500): the detector's network runs on the sensor and its
    outputs come with each frame (firmware/camera/imx500.py). The network is the one of
    ``inference.detector.model`` (an .rpk from the imx500-models package)."""

    type: Literal["imx500"]
    # metadata: no image is ever read, only the network's outputs (the CPU never sees a pixel);
    # lores: the lores stream too, for pose crops. auto: metadata unless signals.pose is on.
    mode: Literal["auto", "metadata", "lores"] = "auto"
    # The stream the boxes are mapped onto (lores mode: what pose reads); in metadata mode the
    # smallest main stream picamera2 needs, never read.
    size: Size = [640, 480]
    lores_format: Literal["YUV420", "BGR888", "RGB888"] = "YUV420"
    framerate: float | None = Field(default=None, gt=0, le=120)  # None: the network's inference_rate
    buffer_count: int = Field(default=6, ge=2, le=16)
    capture_timeout_s: float = Field(default=2.0, gt=0, le=60)
    # After opening, the sensor may send frames without the network's outputs this long while it
    # loads the network firmware (minutes the first time a network is used, seconds once cached).
    network_timeout_s: float = Field(default=300.0, gt=0, le=1800)
    # Sim only: instead of a sensor, replay the shipped recording of the network's outputs on this
    # footage (firmware/camera/imx500_fake.py; the footage's pixels only in lores mode).
    fake_footage: str | None = Field(default=None, min_length=1, max_length=4096)
    fake_pacing: Literal["realtime", "fast"] = "realtime"

    def resolved_mode(self, pose: bool) -> Literal["metadata", "lores"]:
        """The mode it runs in: auto reads pixels only when pose is on."""
        if self.mode != "auto":
            return self.mode
        return "lores" if pose else "metadata"

    @field_validator("size")
    @classmethod
    def _size_aligned(cls, v: list[int]) -> list[int]:
        return PicameraConfig._lores_aligned(v)  # type: ignore[no-any-return,operator]


CameraConfig = Annotated[
    Union[ReplayCameraConfig, SyntheticCameraConfig, PicameraConfig, Imx500CameraConfig],
    Field(discriminator="type"),
]


class DetectorNoiseConfig(_Strict):
    """Seeded noise on the real detector's output, as a worse detector would give (sim boards
    only): see firmware/inference/noise.py. For testing the tracker and signals on the real
    pipeline, never for measuring."""

    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    miss: float = Field(default=0.12, ge=0, le=0.9)  # share of boxes dropped at random
    burst: float = Field(default=0.02, ge=0, le=0.5)  # per box and frame: a run of 2-5 misses starts
    jitter: float = Field(default=0.04, ge=0, le=0.3)  # edge error, share of the box's size
    low: float = Field(default=0.12, ge=0, le=1)  # share of boxes whose score drops to 0.3-0.5
    false_positives: float = Field(default=0.3, ge=0, le=20)  # mean per frame


class DetectorConfig(_Strict):
    model: str = Field(default="ssd_mobilenet_v1", min_length=1, max_length=128)
    # The lowest score the detector reports. Low on purpose: which candidates become people is the
    # tracker's decision (tracking.high_score, low_score, new_track_score), and a shopper standing
    # still often scores 0.3-0.5. Must not exceed tracking.low_score.
    score_threshold: float = Field(default=0.25, gt=0, le=1)
    max_detections: int = Field(default=100, ge=1, le=300)  # per frame, best first (more: `capped`)
    nms_iou: float | None = Field(default=None, ge=0.1, le=0.95)  # None: the model's own NMS threshold
    # Boxes wider than this many times their height (in pixels) are not one standing person.
    max_aspect: float = Field(default=1.2, gt=0.1, le=10)
    # Two boxes nested this much (of the smaller one's area) are one person: the better one stays
    # (SSD adds boxes on a torso or legs, or loosely around someone, beside the box on them).
    max_contained: float | None = Field(default=0.8, gt=0.3, le=1)  # None: keep nested boxes
    noise: DetectorNoiseConfig | None = None  # sim boards only: a seeded, worse detector


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class InferenceConfig(_Strict):
    runtime: Literal["auto", "litert", "tflite-runtime"] = "auto"
    # CPU inference threads (XNNPACK). auto: on 4 cores or more one core fewer than the board has,
    # so the camera thread (the VC4 boards' YUV conversion), the event loop and the analysis thread
    # (tracker, pose, signals beside the next frame's detector) keep a core of their own instead of
    # preempting the inference threads; on 1 or 2 cores every core (one thread alone gave a third fewer
    # frames on 2 cores, in alternating blocks of one run: XNNPACK still gains from the second). See the
    # board configs and the README's make bench section.
    threads: int | Literal["auto"] = "auto"
    # Where the detector runs: the CPU, a Coral (edgetpu), the AI Camera's sensor (imx500: the
    # camera must be type imx500) or a Hailo-8/8L (hailo: a HEF model, on a Pi 5's PCIe).
    delegate: Literal["cpu", "edgetpu", "imx500", "hailo"] = "cpu"
    models_dir: str = Field(default="../models", min_length=1, max_length=4096)
    queue_size: int = Field(default=2, ge=1, le=64)
    detector: DetectorConfig = DetectorConfig()
    # A CPU detector (manifest key) to switch to when the configured one cannot load or its
    # accelerator fails mid-run (Edge TPU unplugged); None: stay degraded until restarted.
    fallback_model: str | None = Field(default=None, min_length=1, max_length=128)
    # Consecutive failed invokes that count as a dead model or accelerator (then: fallback).
    max_consecutive_errors: int = Field(default=3, ge=1, le=1000)
    # On the fallback, try the configured detector (and pose) again this often: an Edge TPU
    # plugged back in, or a USB glitch over, brings the board back without a restart. None: never.
    retry_primary_s: float | None = Field(default=300.0, ge=0.1, le=86400)

    @field_validator("threads", mode="plain")
    @classmethod
    def _threads(cls, v: Any) -> int | Literal["auto"]:
        if v == "auto":
            return "auto"
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("Input should be a valid integer (1 to 16) or auto")
        if v < 1:
            raise ValueError("Input should be greater than or equal to 1")
        if v > 16:
            raise ValueError("Input should be less than or equal to 16")
        return v

    @property
    def num_threads(self) -> int:
        """The inference threads to run: ``threads``, or for auto the cores less one on 4 cores or more."""
        if self.threads != "auto":
            return self.threads
        cores = cpu_cores()
        return cores - 1 if cores >= 4 else cores


class BufferConfig(_Strict):
    # Sentiment vectors held in RAM (one per track per window); oldest overwritten first.
    # 6000 = 10 minutes of 10 people in view with 2 s windows.
    capacity: int = Field(default=6000, ge=16, le=200_000)


class TlsConfig(_Strict):
    """The device certificate and its private key (PEM), created by `cuecam provision`."""

    cert: str = Field(min_length=1, max_length=4096)
    key: str = Field(min_length=1, max_length=4096)


class RateLimitConfig(_Strict):
    """Per client address: a token bucket of ``burst`` requests refilled at ``per_s``; beyond it, 429."""

    per_s: float = Field(default=20.0, gt=0, le=100_000)
    burst: int = Field(default=60, ge=1, le=1_000_000)


class ApiConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    token_file: str = Field(default="/etc/cuecam/api-token", min_length=1, max_length=4096)
    generate_token: bool = False
    max_limit: int = Field(default=1000, ge=1, le=10_000)
    tls: TlsConfig | None = None  # https with the device certificate; paths relative to this file
    rate_limit: RateLimitConfig = RateLimitConfig()
    # A connection that has not delivered a complete request (headers) this long after it opened or
    # after its last response is closed: idle keep-alive, slow headers, half-open peers.
    idle_timeout_s: float = Field(default=15.0, ge=1, le=600)
    # Body read + handler + response write of one request (POST /v1/ota: per chunk instead).
    request_timeout_s: float = Field(default=30.0, ge=1, le=600)
    max_connections: int = Field(default=64, ge=1, le=4096)

    @field_validator("host")
    @classmethod
    def _ip(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
        except ValueError as e:
            raise ValueError(f"host must be an IP address such as 127.0.0.1 or 0.0.0.0, not {v!r}") from e
        return v

    @model_validator(mode="after")
    def _generated_only_on_loopback(self) -> ApiConfig:
        if self.generate_token and not ipaddress.ip_address(self.host).is_loopback:
            raise ValueError("generate_token is for loopback-only sim boards: a board serving the network "
                             "needs a provisioned token (`cuecam provision`)")
        return self


Point = Annotated[list[Annotated[float, Field(ge=0.0, le=1.0)]], Field(min_length=2, max_length=2)]
WorldPoint = Annotated[list[Annotated[float, Field(ge=-1e4, le=1e4)]], Field(min_length=2, max_length=2)]


AREA_KINDS = ("attraction", "entrance", "aisle", "queue", "excluded")  # zones drawn as a polygon
ZONE_KINDS = (*AREA_KINDS, "line")  # every kind, as the config accepts them (a zone editor reads this)
ZoneKind = Literal["attraction", "entrance", "aisle", "queue", "excluded", "line"]


class ZoneConfig(_Strict):
    """A region of the image (normalized x, y; 0,0 top left) with a behavioural meaning, or a
    counting line.

    attraction: a display, shelf or sign, with a focus point people may face and approach;
    entrance, aisle: places where stays are measured; queue: a place people wait in (a till, a
    fitting room): its length now and how long the people who left it waited; excluded: nothing
    is ever measured there (staff areas). These are drawn as a ``polygon``.

    line: a counting line, drawn as a polyline (``line``, 2 or more points): people's feet
    crossing it are counted by direction, "in" towards ``in_side`` (left or right as seen in the
    image when walking the line from its first point to its last), once they are ``hysteresis``
    past it. ``entrance``: the line is a door of the store, and its "in" count is the store's
    footfall at the gateway."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: ZoneKind
    polygon: Annotated[list[Point], Field(min_length=3, max_length=64)] | None = None
    focus: Point | None = None
    # Approach/avoid is measured within this distance of the focus point: metres with a
    # ground_plane, else person heights (box heights, ~1.7 m).
    influence: float | None = Field(default=None, gt=0, le=100)
    # Expected stay in seconds; when absent the zone learns it (running median, RAM only).
    expected_dwell_s: float | None = Field(default=None, gt=0, le=3600)
    # kind: line only
    line: Annotated[list[Point], Field(min_length=2, max_length=64)] | None = None
    in_side: Literal["left", "right"] | None = None
    # How far past the line the feet must be before a crossing counts (and back before it can
    # count the other way): metres with a ground_plane, else person heights. Default 0.3 person
    # heights (0.5 m with a ground plane): more than a detector's box wobble, less than a step.
    hysteresis: float | None = Field(default=None, gt=0, le=10)
    entrance: bool | None = None  # a store door (default true for a line): its "in" count is footfall
    # kind: queue only. Someone inside less than this is passing by, not queueing (default 2 s).
    min_wait_s: float | None = Field(default=None, ge=0, le=600)

    @model_validator(mode="after")
    def _check(self) -> ZoneConfig:
        if self.kind == "attraction" and self.focus is None:
            raise ValueError("an attraction zone needs a focus point (the display or shelf people would face)")
        if self.kind != "attraction" and (self.focus is not None or self.influence is not None):
            raise ValueError("only attraction zones take focus and influence")
        if self.kind != "queue" and self.min_wait_s is not None:
            raise ValueError("only queue zones take min_wait_s")
        if self.kind == "line":
            if self.polygon is not None or self.expected_dwell_s is not None:
                raise ValueError("a line zone is a polyline: give `line` (2 or more points), not polygon or expected_dwell_s")
            if self.line is None:
                raise ValueError("a line zone needs `line`: 2 or more points [[x, y], ...]")
            if self.in_side is None:
                raise ValueError("a line zone needs in_side: left or right (as seen walking the line from its "
                                 "first point to its last), the side people are in once they crossed in")
            length = sum(((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2) ** 0.5 for a, b in itertools.pairwise(self.line))
            if length < 1e-2:
                raise ValueError("line is (almost) a point: its points must span at least 1 % of the frame")
            return self
        if self.line is not None or self.in_side is not None or self.hysteresis is not None or self.entrance is not None:
            raise ValueError("only line zones take line, in_side, hysteresis and entrance")
        if self.polygon is None:
            raise ValueError(f"a {self.kind} zone needs a polygon: 3 or more points [[x, y], ...]")
        xs = [p[0] for p in self.polygon]
        ys = [p[1] for p in self.polygon]
        area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))
        if area < 1e-4:
            raise ValueError("polygon has (almost) no area")
        return self

    @property
    def points(self) -> list[list[float]]:
        """The polygon of an area zone, the polyline of a line."""
        pts = self.line if self.kind == "line" else self.polygon
        assert pts is not None
        return pts


class GroundPlaneConfig(_Strict):
    """Four image points (normalized) and where they are on the floor (metres): speeds and
    distances are then in metres instead of person heights."""

    image: Annotated[list[Point], Field(min_length=4, max_length=4)]
    world: Annotated[list[WorldPoint], Field(min_length=4, max_length=4)]


class TrackingConfig(_Strict):
    """ByteTrack-style association; every threshold is a detector score, every span in seconds."""

    high_score: float = Field(default=0.5, gt=0, le=1)  # at or above: first association
    low_score: float = Field(default=0.25, gt=0, le=1)  # low..high: only keeps existing tracks alive
    new_track_score: float = Field(default=0.6, gt=0, le=1)  # an unmatched box this good starts a track
    min_hits: int = Field(default=3, ge=1, le=50)  # matches before a new track is reported...
    min_age_s: float = Field(default=0.3, ge=0, le=5)  # ...spanning at least this long...
    confirm_within_s: float = Field(default=1.5, gt=0, le=10)  # ...within this long of its first box
    max_lost_s: float = Field(default=3.0, gt=0, le=10)  # a lost person can be picked up again this long

    @model_validator(mode="after")
    def _ordered(self) -> TrackingConfig:
        if not self.low_score <= self.high_score <= self.new_track_score:
            raise ValueError(f"scores must be ordered low_score <= high_score <= new_track_score, not "
                             f"{self.low_score:g}, {self.high_score:g}, {self.new_track_score:g}")
        if self.min_age_s > self.confirm_within_s:
            raise ValueError(f"min_age_s ({self.min_age_s:g}) cannot exceed confirm_within_s ({self.confirm_within_s:g})")
        return self


class SignalsConfig(_Strict):
    window_s: float = Field(default=2.0, ge=0.5, le=60)
    # Pose gives body orientation; `off` for weak boards (orientation then follows motion heading).
    pose: Literal["off", "movenet"] = "movenet"
    pose_model: str = Field(default="movenet_lightning", min_length=1, max_length=128)
    pose_budget: int = Field(default=2, ge=0, le=16)  # pose invokes per frame, rotating through people
    pose_min_box_px: float = Field(default=80.0, ge=0, le=4096)

    @field_validator("pose", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML 1.1 reads a bare `off` as false


HHMM = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]


class ButtonConfig(_Strict):
    """The signage opt-out button on a GPIO pin (BCM numbering), read with gpiozero."""

    pin: int = Field(default=17, ge=0, le=27)
    pull_up: bool = True  # button between the pin and ground
    bounce_s: float = Field(default=0.05, ge=0, le=1)
    # What ends a pause early: nothing, a second press, or holding the button this long.
    resume: Literal["none", "second_press", "long_press"] = "long_press"
    long_press_s: float = Field(default=3.0, gt=0, le=30)


class LedConfig(_Strict):
    pin: int = Field(default=27, ge=0, le=27)  # blinks while paused, steady on while measuring


class CompanionConfig(_Strict):
    """An opt-out companion (companion/: a Pico W with a button by the sign) paired with this board.
    Its requests to POST /v1/optout are signed with the key in ``key_file`` (`cuecam provision
    --companion NAME`); the key allows nothing but opting out (docs/companion.md)."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$")
    key_file: str = Field(min_length=1, max_length=4096)
    # Where the companion's button is, for the sign (`cuecam sign --companion NAME`).
    position: str | None = Field(default=None, min_length=1, max_length=120)


class OptOutConfig(_Strict):
    pause_s: float = Field(default=600.0, ge=1, le=3600)  # pause after a press (default 10 min)
    # Purge what the board holds from the last lookback_s seconds; None: everything it holds.
    lookback_s: float | None = Field(default=None, gt=0, le=3600)
    # `mock`: gpiozero's MockFactory (sim board and tests; POST /v1/sim/button presses it);
    # `auto`: the real pins (lgpio on a Pi 5, RPi.GPIO or lgpio on a Pi 4); `none`: no button.
    pins: Literal["auto", "mock", "none"] = "auto"
    button: ButtonConfig = ButtonConfig()
    led: LedConfig | None = LedConfig()
    companions: Annotated[list[CompanionConfig], Field(max_length=32)] = []
    # A companion's request is refused when its timestamp is further than this from the board's
    # clock (the companion learns the board's clock from its answers; docs/companion.md).
    companion_window_s: float = Field(default=90.0, ge=10, le=600)

    @model_validator(mode="after")
    def _unique_companions(self) -> OptOutConfig:
        _unique("companion", [c.name for c in self.companions])
        return self


class ClosedHours(_Strict):
    """Local times when the shop is closed (staff only): frames are dropped before detection."""

    start: HHMM
    end: HHMM  # may be earlier than start: the window wraps past midnight
    days: Annotated[list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]], Field(min_length=1, max_length=7)] = [
        "mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class NoticeConfig(_Strict):
    """What the store's privacy sign says (GET /v1/privacy, `cuecam sign`)."""

    controller: str = Field(default="The store", min_length=1, max_length=200)  # who is responsible
    contact: str = Field(default="ask at the till", min_length=1, max_length=200)
    purpose: str = Field(default="to adapt displays and offers to how busy and how engaging each area is",
                         min_length=1, max_length=400)
    language: str = Field(default="en", pattern=r"^[a-z]{2}(-[A-Z]{2})?$")


class PrivacyConfig(_Strict):
    retention_s: float = Field(default=600.0, ge=10, le=3600)  # vectors older than this are purged
    token_rotation_s: float = Field(default=600.0, ge=10, le=600)  # a person's token is replaced this often
    k_anonymity: int = Field(default=5, ge=2, le=100)  # aggregate cells from fewer tracks are suppressed
    timezone: str | None = Field(default=None, max_length=64)  # for closed hours; None: the board's local time
    closed_hours: Annotated[list[ClosedHours], Field(max_length=14)] = []
    optout: OptOutConfig = OptOutConfig()
    notice: NoticeConfig = NoticeConfig()
    audit_log: str = Field(default="/var/lib/cuecam/audit.jsonl", min_length=1, max_length=4096)
    audit_max_bytes: int = Field(default=256 * 1024, ge=4096, le=16 * 1024 * 1024)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is not None:
            import zoneinfo

            try:
                zoneinfo.ZoneInfo(v)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
                raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Europe/Berlin)") from e
        return v


class HealthConfig(_Strict):
    """When the board counts as stalled, and how a failing camera is restarted."""

    # No frame processed for this long: /health is degraded and the systemd watchdog pings stop.
    stall_s: float = Field(default=5.0, ge=0.5, le=600)
    startup_grace_s: float = Field(default=15.0, ge=0, le=600)  # before the first frame
    camera_timeout_s: float = Field(default=5.0, gt=0, le=600)  # a read taking longer: hung camera
    backoff_s: float = Field(default=0.5, gt=0, le=60)  # first camera restart delay, doubled per failure
    backoff_max_s: float = Field(default=30.0, gt=0, le=600)


class ThermalConfig(_Strict):
    """SoC temperature and firmware throttle flags; above soft_limit_c the frame rate drops."""

    # auto: the Pi's sysfs files when present; sysfs: those files (an error if absent);
    # file: read temp_path / throttled_path you control (tests, other boards); none: no sensor.
    sensor: Literal["auto", "sysfs", "file", "none"] = "auto"
    temp_path: str = Field(default="/sys/class/thermal/thermal_zone0/temp", min_length=1, max_length=4096)
    throttled_path: str = Field(default="/sys/devices/platform/soc/soc:firmware/get_throttled", min_length=1,
                                max_length=4096)
    # The Pi firmware throttles at 80-85 C; slow down before it does.
    soft_limit_c: float = Field(default=75.0, ge=30, le=110)
    hysteresis_c: float = Field(default=5.0, ge=0, le=30)  # back to full rate below soft_limit - this
    hot_fps: float = Field(default=2.0, gt=0, le=120)  # analysed frames per second while hot
    poll_s: float = Field(default=2.0, ge=0.05, le=60)


class OtaConfig(_Strict):
    """Signed A/B updates (see docs/ota.md)."""

    root: str = Field(default="/var/lib/cuecam/ota", min_length=1, max_length=4096)  # slots, state, staging
    # ed25519 public keys (64 hex characters) allowed to sign bundles; empty: updates refused.
    trusted_keys: Annotated[list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]], Field(max_length=8)] = []
    max_bundle_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, le=2 * 1024 * 1024 * 1024)
    health_timeout_s: float = Field(default=60.0, ge=5, le=900)  # a trial must be healthy within this
    max_boot_attempts: int = Field(default=3, ge=1, le=10)
    # POST /v1/ota/pull fetches only from these hosts (the gateway: IP addresses or names, compared
    # literally) and from loopback; redirects are not followed.
    pull_hosts: Annotated[list[Annotated[str, Field(min_length=1, max_length=253)]], Field(max_length=16)] = []


class CommissioningConfig(_Strict):
    """The commissioning view (GET /ui, docs/commissioning.md): on a black canvas the boxes, skeletons and
    short tails of the people seen now, the zones with their live numbers, a heat map of where feet have been,
    and the zone editor that saves this file. Numbers and geometry only, never a pixel. Off on a production
    board: turned on while a camera is mounted and its zones drawn, then off again. Off, its routes do not exist."""

    enabled: bool = False
    rate_hz: float = Field(default=5.0, ge=0.5, le=15)  # live messages per second, at most, per stream
    max_streams: int = Field(default=4, ge=1, le=16)  # pages watching at once (each client one stream)
    max_stream_s: float = Field(default=3600.0, ge=10, le=86400)  # a stream then ends (the page reconnects)
    tail_s: float = Field(default=3.0, ge=0, le=10)  # how much of each person's path is drawn
    # The traffic map: people stepping into each cell over the last heatmap_minutes (at most privacy.retention_s).
    heatmap_minutes: int = Field(default=10, ge=1, le=60)
    heatmap_grid: Annotated[list[Annotated[int, Field(ge=4, le=96)]], Field(min_length=2, max_length=2)] = [48, 36]


class Config(_Strict):
    version: Literal[1]
    board: BoardConfig
    camera: CameraConfig
    inference: InferenceConfig = InferenceConfig()
    buffer: BufferConfig = BufferConfig()
    api: ApiConfig = ApiConfig()
    zones: Annotated[list[ZoneConfig], Field(max_length=64)] = []
    ground_plane: GroundPlaneConfig | None = None
    tracking: TrackingConfig = TrackingConfig()
    signals: SignalsConfig = SignalsConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    ota: OtaConfig = OtaConfig()
    health: HealthConfig = HealthConfig()
    thermal: ThermalConfig = ThermalConfig()
    commissioning: CommissioningConfig = CommissioningConfig()

    @field_validator("tracking")
    @classmethod
    def _detector_feeds_tracker(cls, v: TrackingConfig, info: Any) -> TrackingConfig:
        inference = info.data.get("inference")
        floor = inference.detector.score_threshold if inference is not None else None
        if floor is not None and floor > v.low_score:
            raise ValueError(f"tracking.low_score {v.low_score:g} is below inference.detector.score_threshold "
                             f"{floor:g}: the detector would drop the weak boxes that keep a still person tracked; "
                             f"lower score_threshold to at most {v.low_score:g}")
        return v

    @model_validator(mode="after")
    def _unique_zones(self) -> Config:
        _unique("zone", [z.name for z in self.zones])
        return self


class LoadedConfig:
    """A validated config plus where it came from (to resolve relative paths)."""

    def __init__(self, config: Config, path: Path) -> None:
        self.config = config
        self.path = path
        self.base_dir = path.parent

    def resolve(self, p: str) -> Path:
        """Resolve a path from the config relative to the config file's directory."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.base_dir / q).resolve()


def _node_lines(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int], dups: list[tuple[int, str]]) -> None:
    """Record the line of every key path (a key's own line for its path) and duplicate keys."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                dups.append((line, ".".join(map(str, path + (key,)))))
            seen.add(key)
            out[path + (key,)] = line
            _node_lines(value_node, path + (key,), out, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, path + (i,), out, dups)


def _data_path(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Map a pydantic error location onto the YAML data path, dropping union tags."""
    path: list[Any] = []
    cur = data
    for part in loc:
        if isinstance(cur, dict):
            if part in cur:
                path.append(part)
                cur = cur[part]
                continue
            if isinstance(part, str) and cur.get("type") == part:
                continue  # discriminated-union tag, not a key in the file
            path.append(part)
            cur = None
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            path.append(part)
            cur = cur[part]
        else:
            if not isinstance(part, str) or part not in ("[key]",):
                path.append(part)
            cur = None
    return tuple(path)


def _line_for(path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int:
    p = path
    while p not in lines and p:
        p = p[:-1]
    return lines.get(p, 1)


def read_capped_text(path: Path, max_bytes: int, what: str, missing_hint: str) -> str:
    """A small UTF-8 file's text, or a ConfigError saying what is wrong with it."""
    try:
        if path.stat().st_size > max_bytes:
            raise ConfigError(f"{path}: {what} is larger than {max_bytes} bytes")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such {what}; {missing_hint}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: {what} is not UTF-8 text") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror}") from e


def parse_strict_yaml(
    text: str, source: str, model: type[M], *, what: str, empty_hint: str, keys_hint: str
) -> tuple[M, dict[tuple[Any, ...], int]]:
    """YAML text validated into ``model``: every problem as ``source:line: dotted.key: message``
    (a ConfigError listing them all). Returns the model and the line of every key."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"{mark.line + 1}" if mark is not None else "?"
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{source}:{line}: not valid YAML: {problem}") from e
    if node is None or data is None:
        raise ConfigError(f"{source}:1: {what} is empty; {empty_hint}")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: {what} must be a mapping of keys, not {type(data).__name__}")
    lines: dict[tuple[Any, ...], int] = {}
    dups: list[tuple[int, str]] = []
    _node_lines(node, (), lines, dups)
    if dups:
        problems = [f"{source}:{line}: {key}: duplicate key (YAML would silently keep the last)" for line, key in dups]
        raise ConfigError("\n".join(problems), problems=problems)
    try:
        return model.model_validate(data), lines
    except ValidationError as e:
        problems = []
        for err in e.errors():
            path = _data_path(tuple(err["loc"]), data)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                # Point at the discriminator key itself (camera.type), not at the section holding it.
                path = (*path, str(err.get("ctx", {}).get("discriminator", "type")).strip("'"))
                if err["type"] == "union_tag_not_found":
                    msg = "required key is missing"
            key = ".".join(str(p) for p in path) or "(top level)"
            if err["type"] == "extra_forbidden":
                msg = f"unknown key (check the spelling; {keys_hint})"
            elif err["type"] == "missing":
                msg = "required key is missing"
            problems.append(f"{source}:{_line_for(path, lines)}: {key}: {msg}")
        raise ConfigError("\n".join(problems), problems=problems) from e


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate config text; raise ConfigError listing every problem with its line."""
    if len(text.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: config is larger than {MAX_CONFIG_BYTES} bytes")
    cfg, lines = parse_strict_yaml(text, source, Config, what="config",
                                   empty_hint="start from board_configs/sim.yaml",
                                   keys_hint="see board_configs/sim.yaml for every key")
    problems = board_problems(cfg)
    if problems:
        out = [f"{source}:{_line_for(path, lines)}: {'.'.join(map(str, path))}: {msg}" for path, msg in problems]
        raise ConfigError("\n".join(out), problems=out)
    return cfg


def board_problems(cfg: Config) -> list[tuple[tuple[str, ...], str]]:
    """What the board's hardware cannot do of this config: (key path, message) pairs."""
    out: list[tuple[tuple[str, ...], str]] = []
    cam = cfg.camera
    if isinstance(cam, PicameraConfig | Imx500CameraConfig) and cfg.board.kind in VC4_BOARDS \
            and cam.lores_format != "YUV420":
        out.append((("camera", "lores_format"),
                    f"a {cfg.board.kind} board (VC4 ISP) gives the lores stream only as YUV420, not {cam.lores_format}"))
    inf = cfg.inference
    if isinstance(cam, Imx500CameraConfig):
        if inf.delegate != "imx500":
            out.append((("inference", "delegate"), "an imx500 camera runs the detector on the sensor: set "
                        "inference.delegate: imx500 and an imx500 detector model"))
        if cam.mode == "metadata" and cfg.signals.pose != "off":
            out.append((("camera", "mode"), "pose reads pixels: with signals.pose on, use camera.mode lores (or auto)"))
        if inf.fallback_model is not None:
            out.append((("inference", "fallback_model"), "the IMX500 is the camera: without it there are no frames "
                        "for a CPU fallback to run on; remove fallback_model"))
    elif inf.delegate == "imx500":
        out.append((("inference", "delegate"), "delegate imx500 needs camera.type: imx500 (the AI Camera)"))
    if inf.delegate == "hailo" and cfg.board.kind not in PCIE_BOARDS | {"sim"}:
        out.append((("inference", "delegate"), f"a Hailo AI Kit / HAT+ needs a Raspberry Pi 5 (PCIe); board kind "
                    f"{cfg.board.kind} has none"))
    if cfg.inference.detector.noise is not None and cfg.board.kind != "sim":
        out.append((("inference", "detector", "noise"),
                    f"makes the detector worse on purpose, for tests: only a sim board may set it, not a {cfg.board.kind} board"))
    return out


def load_config(path: str | Path) -> LoadedConfig:
    """Read, parse and validate a board config file."""
    p = Path(path)
    text = read_capped_text(p, MAX_CONFIG_BYTES, "config file", "the shipped ones are in board_configs/")
    return LoadedConfig(parse_config(text, str(p)), p.resolve())
