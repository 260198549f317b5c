"""Scripted scenes with known ground truth: real people cut out of photos, moved over a real background.

A scene file (YAML, strict like the board configs) names a background, a frame size and rate, a
duration and a list of actors. Each actor is a person cut out of a photo (found by the real SSD
person detector, then separated from its background with ``cv2.grabCut``), drawn at a given
height with its feet (bottom-centre) following timed waypoints::

    background: median:../media/vtest.avi   # per-pixel median of frames across the video (or an image)
    size: [768, 576]
    fps: 10
    duration: 12
    actors:
      - sprite: {image: ../media/test_couple.jpg, person: 0}   # or box: [x0, y0, x1, y1] in pixels
                                                               # or {image: ../media/vtest.avi, frame: 720, person: 9}
        height: {at_top: 90, at_bottom: 200}                   # or a number of pixels
        flip: false
        waypoints:             # [t seconds, x, y]: the feet, normalized to the frame
          - [0, -0.1, 0.5]     # before the first waypoint the actor is absent
          - [4, 0.5, 0.5]
          - [7, 0.5, 0.5]      # the same point twice = standing still
          - [11, 1.1, 0.5]     # after the last waypoint the actor is absent

Relative paths resolve against the scene file's directory. Cut-outs and median backgrounds are
cached in memory per process and never written to disk (cuecam keeps no pixels on disk).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import InferenceConfig, Size, _line_for, parse_strict_yaml, read_capped_text
from ..errors import CameraError, ConfigError

if TYPE_CHECKING:
    from ..inference import Detector

MAX_SCENE_BYTES = 64 * 1024
MAX_SOURCE_PIXELS = 64 * 1024 * 1024  # a photo or video frame a sprite or background is taken from
SPRITE_MAX_HEIGHT = 480  # cut-outs are kept at most this tall (they are drawn smaller)
MEDIAN_MAX_FRAMES = 101
CACHE_ENTRIES = 64
SPRITE_PERSON_SCORE = 0.5  # `person: N` counts the people the detector finds at this score or above
SCENES_DIR = Path(__file__).resolve().parent / "scenes"

Coord = Annotated[float, Field(ge=-1.0, le=2.0)]
Waypoint = Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=3, max_length=3)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SpriteSpec(_Strict):
    """A person in a photo (or in frame ``frame`` of a video): ``person`` = index among the
    detected people sorted left to right by box centre (SSD, score >= 0.5), or ``box`` =
    [x0, y0, x1, y1] in the image's pixels."""

    image: str = Field(min_length=1, max_length=4096)
    frame: int | None = Field(default=None, ge=0, le=1_000_000)  # ``image`` is a video: take this frame
    person: int | None = Field(default=None, ge=0, le=99)
    box: Annotated[list[Annotated[int, Field(ge=0, le=65535)]], Field(min_length=4, max_length=4)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SpriteSpec:
        if (self.person is None) == (self.box is None):
            raise ValueError("give exactly one of person: N (the N-th detected person from the left) or box: [x0, y0, x1, y1]")
        if self.box is not None and not (self.box[2] > self.box[0] and self.box[3] > self.box[1]):
            raise ValueError(f"box {self.box} is empty: it must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0")
        return self


class Height(_Strict):
    """Drawn height of the person in pixels, linear in the feet's y (fake perspective)."""

    at_top: float = Field(gt=4, le=8192)  # feet at y = 0
    at_bottom: float = Field(gt=4, le=8192)  # feet at y = 1

    def px(self, y: float) -> float:
        return self.at_top + (self.at_bottom - self.at_top) * y


class ActorSpec(_Strict):
    name: str = Field(default="", max_length=64)
    sprite: SpriteSpec
    height: Height
    flip: bool = False  # mirror the cut-out left-right
    waypoints: Annotated[list[Waypoint], Field(min_length=2, max_length=1000)]

    @field_validator("height", mode="before")
    @classmethod
    def _height(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"at_top": float(v), "at_bottom": float(v)}
        if not isinstance(v, dict):
            raise ValueError("height must be pixels (a number) or {at_top: px, at_bottom: px}")
        return v

    @field_validator("waypoints")
    @classmethod
    def _increasing(cls, v: list[list[float]]) -> list[list[float]]:
        if v[0][0] < 0:
            raise ValueError(f"waypoint 0 is at t={v[0][0]:g}; times start at 0")
        for i, (a, b) in enumerate(itertools.pairwise(v), start=1):
            if b[0] <= a[0]:
                raise ValueError(
                    f"waypoint {i} at t={b[0]:g} is not after waypoint {i - 1} at t={a[0]:g}: times must increase "
                    "(to stand still, repeat the position at a later time)"
                )
        for i, (_, x, y) in enumerate(v):
            if not (-1.0 <= x <= 2.0 and -1.0 <= y <= 2.0):
                raise ValueError(f"waypoint {i}: x and y are normalized to the frame and must lie in -1..2, not ({x:g}, {y:g})")
        return v


class SceneSpec(_Strict):
    description: str = Field(default="", max_length=4000)
    background: str = Field(min_length=1, max_length=4096)  # "median:VIDEO" or an image file
    median_frames: int = Field(default=25, ge=3, le=MEDIAN_MAX_FRAMES)  # frames sampled for median:
    size: Size = [768, 576]
    fps: float = Field(default=10.0, gt=0, le=120)
    duration: float = Field(gt=0, le=3600)
    loop: bool = False  # start again after `duration` instead of ending
    actors: Annotated[list[ActorSpec], Field(max_length=32)] = []


@dataclass(frozen=True)
class Scene:
    """A validated scene file: its spec, where it lives, and the line of every key (for errors)."""

    path: Path
    spec: SceneSpec
    lines: dict[tuple[Any, ...], int]

    @property
    def size(self) -> tuple[int, int]:
        return self.spec.size[0], self.spec.size[1]

    @property
    def fps(self) -> float:
        return self.spec.fps

    @property
    def frames(self) -> int:
        """Frames in one pass: t = 0, 1/fps, ... while t < duration."""
        return max(1, math.ceil(self.spec.duration * self.spec.fps - 1e-9))

    def resolve(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.path.parent / q).resolve()

    def where(self, *key: Any) -> str:
        """``file:line: dotted.key`` for messages."""
        return f"{self.path}:{_line_for(key, self.lines)}: {'.'.join(map(str, key))}"

    @property
    def background(self) -> tuple[str, Path]:
        """("median", video) or ("image", path)."""
        bg = self.spec.background
        if bg.startswith("median:"):
            return "median", self.resolve(bg[len("median:") :].strip())
        return "image", self.resolve(bg)


def load_scene(path: str | Path) -> Scene:
    """Read and validate a scene file; raise ConfigError naming file, line and key."""
    p = Path(path)
    text = read_capped_text(p, MAX_SCENE_BYTES, "scene file", f"the shipped ones are in {SCENES_DIR}")
    spec, lines = parse_strict_yaml(text, str(p), SceneSpec, what="scene file",
                                    empty_hint="a scene needs background, duration and actors",
                                    keys_hint="see firmware/camera/scene.py for every key")
    scene = Scene(p.resolve(), spec, lines)
    kind, bg = scene.background
    if not bg.is_file():
        what = "video for the median background" if kind == "median" else "background image"
        raise ConfigError(f"{scene.where('background')}: no such {what}: {bg}")
    for i, a in enumerate(spec.actors):
        img = scene.resolve(a.sprite.image)
        if not img.is_file():
            raise ConfigError(f"{scene.where('actors', i, 'sprite', 'image')}: no such sprite image: {img}")
    return scene


# -- pixels: backgrounds and cut-outs, cached in memory per process ---------------------------------


@dataclass(frozen=True)
class Sprite:
    """A cut-out: float32 (h, w, 4), RGB premultiplied by alpha, alpha in 0..1; its rectangle is the
    person's tight box (alpha >= 0.5), so the feet are at the bottom-centre."""

    rgba: np.ndarray

    @property
    def aspect(self) -> float:
        return float(self.rgba.shape[1] / self.rgba.shape[0])

    def flipped(self) -> Sprite:
        return Sprite(np.ascontiguousarray(self.rgba[:, ::-1]))


DetectorFactory = Callable[[], "Detector"]

_lock = threading.RLock()  # re-entrant: a build may use other cached values
_cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_default_detector: list[Detector] = []


def default_detector() -> Detector:
    """The SSD person detector from the package's models folder, built once per process."""
    if not _default_detector:
        from ..inference import create_detector
        from ..models import DEFAULT_MANIFEST, load_manifest

        _default_detector.append(create_detector(InferenceConfig(), DEFAULT_MANIFEST.parent, load_manifest(DEFAULT_MANIFEST)))
    return _default_detector[0]


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def _cached(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """Memoize in memory (bounded, least recently used out); builds run under one process-wide lock."""
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        value = build()
        _cache[key] = value
        while len(_cache) > CACHE_ENTRIES:
            _cache.popitem(last=False)
        return value


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def _read_image(path: Path, frame: int | None = None) -> np.ndarray:
    """An image file, or frame ``frame`` (0-based) of a video, as RGB uint8."""
    if frame is None:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise CameraError(f"{path}: not a decodable image")
    else:
        img = _video_frame(path, frame)
    if img.shape[0] * img.shape[1] > MAX_SOURCE_PIXELS:
        raise CameraError(f"{path}: {img.shape[1]}x{img.shape[0]} is larger than {MAX_SOURCE_PIXELS} pixels")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@contextlib.contextmanager
def _video(path: Path, what: str) -> Iterator[Any]:
    """An opened cv2.VideoCapture of ``path`` (released after); ``what`` says what it is read for."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise CameraError(f"{path}: cannot open the video for {what}")
        yield cap
    finally:
        cap.release()


def _next_frame(cap: Any, path: Path) -> np.ndarray | None:
    """The next frame (BGR), None at the end. Sequential reads: seeking is unreliable in some codecs."""
    ok, img = cap.read()
    if not ok:
        return None
    if img.shape[0] * img.shape[1] > MAX_SOURCE_PIXELS:
        raise CameraError(f"{path}: frames larger than {MAX_SOURCE_PIXELS} pixels")
    out: np.ndarray = img
    return out


def _video_frame(path: Path, frame: int) -> np.ndarray:
    with _video(path, "a sprite") as cap:
        for i in range(frame + 1):
            img = _next_frame(cap, path)
            if img is None:
                raise CameraError(f"{path}: the video has only {i} frames, so there is no frame {frame}")
    assert img is not None  # frame >= 0: read at least once
    return img


def median_background(video: Path, frames: int) -> np.ndarray:
    """Per-pixel median of ``frames`` frames spread evenly over the video: walkers vanish, the place stays."""

    def build() -> np.ndarray:
        with _video(video, "a median background") as cap:
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            picks = set(np.linspace(0, max(n - 1, 0), frames).astype(int).tolist()) if n > 0 else None
            got = []
            i = 0
            while picks is None or i <= max(picks):
                f = _next_frame(cap, video)
                if f is None:
                    break
                if picks is None or i in picks:
                    got.append(f)
                    if picks is None and len(got) >= frames:
                        break
                i += 1
        if len(got) < 3:
            raise CameraError(f"{video}: only {len(got)} decodable frames; a median background needs at least 3")
        med = np.median(np.stack(got), axis=0).astype(np.uint8)
        return cv2.cvtColor(med, cv2.COLOR_BGR2RGB)

    out: np.ndarray = _cached(("median", *_file_key(video), frames), build)
    return out


def background_image(scene: Scene) -> np.ndarray:
    """The scene's background at the scene's size (RGB uint8; a shared cached array: copy before drawing)."""
    kind, path = scene.background
    w, h = scene.size

    def build() -> np.ndarray:
        img = median_background(path, scene.spec.median_frames) if kind == "median" else _read_image(path)
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        img.setflags(write=False)
        return img

    out: np.ndarray = _cached(("background", kind, *_file_key(path), scene.spec.median_frames, w, h), build)
    return out


def detect_people(image_path: Path, detector_factory: DetectorFactory, frame: int | None = None) -> np.ndarray:
    """Person boxes (n, 4) in pixels (x0, y0, x1, y1), sorted left to right by box centre."""

    def build() -> np.ndarray:
        img = _read_image(image_path, frame)
        h, w = img.shape[:2]
        det = detector_factory().detect(img)
        # the people a photo shows, not every candidate the detector reports down to a low score
        boxes = det.boxes[det.scores >= SPRITE_PERSON_SCORE].astype(np.float64) * [w, h, w, h]
        return boxes[np.argsort((boxes[:, 0] + boxes[:, 2]) / 2, kind="stable")]

    out: np.ndarray = _cached(("people", *_file_key(image_path), frame), build)
    return out


def cut_out(image: np.ndarray, box: np.ndarray, others: np.ndarray | None = None) -> Sprite:
    """Separate the person inside ``box`` (pixels, x0 y0 x1 y1) from the photo's background.

    grabCut starts from the box expanded by 6 % (detector boxes often clip feet and hair) inside a
    context margin it learns the background from; the parts of ``others`` (other people's boxes)
    outside our box are marked as sure background so a neighbour's arm does not come along. The
    largest foreground blob is kept and its edge feathered into a soft alpha."""
    ih, iw = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = x1 - x0, y1 - y0
    # Context crop, scaled so the person is at most SPRITE_MAX_HEIGHT tall.
    cx0, cy0 = max(0, int(x0 - 0.35 * bw)), max(0, int(y0 - 0.15 * bh))
    cx1, cy1 = min(iw, math.ceil(x1 + 0.35 * bw)), min(ih, math.ceil(y1 + 0.15 * bh))
    scale = min(1.0, SPRITE_MAX_HEIGHT / max(bh, 1.0))
    crop = image[cy0:cy1, cx0:cx1]
    if scale < 1.0:
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    ch, cw = crop.shape[:2]

    def to_crop(b: np.ndarray | tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        return (int(np.clip((b[0] - cx0) * scale, 0, cw)), int(np.clip((b[1] - cy0) * scale, 0, ch)),
                int(np.clip((b[2] - cx0) * scale, 0, cw)), int(np.clip((b[3] - cy0) * scale, 0, ch)))

    rx0, ry0, rx1, ry1 = to_crop((x0 - 0.06 * bw, y0 - 0.06 * bh, x1 + 0.06 * bw, y1 + 0.06 * bh))
    if rx1 - rx0 < 8 or ry1 - ry0 < 16:
        raise CameraError(f"person box {np.round(box).astype(int).tolist()} is too small to cut out")
    mask = np.full((ch, cw), cv2.GC_BGD, np.uint8)
    mask[ry0:ry1, rx0:rx1] = cv2.GC_PR_FGD
    if others is not None and len(others):
        for ob in others:
            ox0, oy0, ox1, oy1 = to_crop(ob)
            mask[oy0:oy1, ox0:ox1] = cv2.GC_BGD
        bx0, by0, bx1, by1 = to_crop(box)
        mask[by0:by1, bx0:bx1] = cv2.GC_PR_FGD  # where the boxes overlap, ours wins
    # Sure foreground: a narrow strip down the middle of head and torso (standing people).
    bx0, by0, bx1, by1 = to_crop(box)
    mx, half = (bx0 + bx1) // 2, max(1, int(0.06 * (bx1 - bx0)))
    mask[by0 + int(0.1 * (by1 - by0)) : by0 + int(0.62 * (by1 - by0)), mx - half : mx + half + 1] = cv2.GC_FGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    bgr = np.ascontiguousarray(crop[..., ::-1])
    cv2.grabCut(bgr, mask, (0, 0, 0, 0), bgd, fgd, 5, cv2.GC_INIT_WITH_MASK)
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))  # snowflake holes
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if n < 2:
        raise CameraError(f"grabCut found no person inside box {np.round(box).astype(int).tolist()}")
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    alpha = cv2.GaussianBlur((labels == biggest).astype(np.float32), (0, 0), sigmaX=1.0)
    ys, xs = np.nonzero(alpha >= 0.5)
    ty0, ty1, tx0, tx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    a = alpha[ty0:ty1, tx0:tx1, None]
    rgb = crop[ty0:ty1, tx0:tx1].astype(np.float32) * a
    return Sprite(np.ascontiguousarray(np.concatenate([rgb, a], axis=2), dtype=np.float32))


def sprite_for(scene: Scene, index: int, detector_factory: DetectorFactory) -> Sprite:
    """The cut-out of actor ``index`` (flipped if asked)."""
    spec = scene.spec.actors[index].sprite
    path = scene.resolve(spec.image)
    people: np.ndarray | None = None
    if spec.person is not None:
        people = detect_people(path, detector_factory, spec.frame)
        if spec.person >= len(people):
            where = scene.where("actors", index, "sprite", "person")
            if not len(people):
                raise CameraError(f"{where}: the detector finds nobody in {path}; give box: [x0, y0, x1, y1] in pixels")
            raise CameraError(
                f"{where}: the detector finds {len(people)} {'person' if len(people) == 1 else 'people'} in {path} "
                f"(score >= 0.5), so there is no person {spec.person}; use 0..{len(people) - 1} (left to right by box "
                "centre) or give box: [x0, y0, x1, y1] in pixels"
            )
        box = people[spec.person]
        others = np.delete(people, spec.person, axis=0)
    else:
        assert spec.box is not None
        box = np.asarray(spec.box, np.float64)
        others = None

    def build() -> Sprite:
        img = _read_image(path, spec.frame)
        ih, iw = img.shape[:2]
        if box[0] >= iw or box[1] >= ih:
            raise CameraError(f"{scene.where('actors', index, 'sprite', 'box')}: box lies outside the {iw}x{ih} image {path}")
        try:
            return cut_out(img, box, others)
        except CameraError as e:
            raise CameraError(f"{scene.where('actors', index, 'sprite')}: {path}: {e}") from e

    sprite: Sprite = _cached(("sprite", *_file_key(path), spec.frame, tuple(np.round(box, 3).tolist())), build)
    return sprite.flipped() if scene.spec.actors[index].flip else sprite


# -- rendering ---------------------------------------------------------------------------------------


class SceneRenderer:
    """Draws a scene at any time t: the background plus every actor present, nearest (lowest feet) on top.

    Building one decodes the background and cuts out the sprites (seconds the first time in a
    process, then cached); ``render`` takes a few milliseconds."""

    def __init__(self, scene: Scene, *, detector_factory: DetectorFactory | None = None) -> None:
        factory = detector_factory or default_detector
        self.scene = scene
        self.background = background_image(scene)
        self.sprites = [sprite_for(scene, i, factory) for i in range(len(scene.spec.actors))]
        self._paths = [np.asarray(a.waypoints, np.float64) for a in scene.spec.actors]

    def feet_at(self, index: int, t: float) -> tuple[float, float] | None:
        """Normalized feet position of actor ``index`` at t seconds, or None when it is absent."""
        wp = self._paths[index]
        if t < wp[0, 0] or t > wp[-1, 0]:
            return None
        return float(np.interp(t, wp[:, 0], wp[:, 1])), float(np.interp(t, wp[:, 0], wp[:, 2]))

    def boxes_at(self, t: float) -> list[tuple[int, tuple[int, int, int, int]]]:
        """(actor index, pixel box x0 y0 x1 y1 before clipping to the frame) of every actor present,
        in drawing order (far first)."""
        out = []
        for i, a in enumerate(self.scene.spec.actors):
            feet = self.feet_at(i, t)
            if feet is None:
                continue
            w, h = self.scene.size
            fx, fy = feet[0] * w, feet[1] * h
            ph = max(2, round(a.height.px(feet[1])))
            pw = max(1, round(ph * self.sprites[i].aspect))
            x0, y1 = round(fx - pw / 2), round(fy)
            out.append((i, (x0, y1 - ph, x0 + pw, y1)))
        out.sort(key=lambda item: item[1][3])
        return out

    def truth_at(self, t: float) -> np.ndarray:
        """(n, 5) float32 [actor index, x0, y0, x1, y1] normalized and clipped, for actors in view."""
        return self._truth(self.boxes_at(t))

    def _truth(self, boxes: list[tuple[int, tuple[int, int, int, int]]]) -> np.ndarray:
        w, h = self.scene.size
        rows = []
        for i, (x0, y0, x1, y1) in sorted(boxes):
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            if cx1 > cx0 and cy1 > cy0:
                rows.append((i, cx0 / w, cy0 / h, cx1 / w, cy1 / h))
        return np.asarray(rows, dtype=np.float32).reshape(-1, 5)

    def render(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 frame, truth (n, 5)) at t seconds into the scene."""
        img = self.background.copy()
        h, w = img.shape[:2]
        boxes = self.boxes_at(t)
        for i, (x0, y0, x1, y1) in boxes:
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
            if cx1 <= cx0 or cy1 <= cy0:
                continue
            src = self.sprites[i].rgba
            interp = cv2.INTER_AREA if (y1 - y0) < src.shape[0] else cv2.INTER_LINEAR
            spr = cv2.resize(src, (x1 - x0, y1 - y0), interpolation=interp)
            spr = spr[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            roi = img[cy0:cy1, cx0:cx1].astype(np.float32)
            out = spr[..., :3] + roi * (1.0 - spr[..., 3:4])
            img[cy0:cy1, cx0:cx1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        return img, self._truth(boxes)
