"""No pixels in any output: every API route's response on a running sim board, the results the
analyzer hands out of the inference thread, and the ring buffer's record type."""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any

import cv2
import numpy as np
import pytest

from firmware.app import build_service
from firmware.http.app import ROUTES
from firmware.signals.analyzer import FrameResult
from firmware.signals.engine import Vector
from firmware.signals.schema import VECTOR_DTYPE
from firmware.tracking.tracker import FrozenBox, KalmanBank, KalmanBox, Track
from tests.conftest import VTEST, sim_config
from tests.integration.test_privacy import AUTH, TOKEN, _client, _until

MAX_STRING = 200
BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{64,}")
DEFAULT_MAX_ITEMS = 1000
MAX_BODY = 2 * 1024 * 1024
MAX_METRICS_LINE = 1000


# -- (a) every route's response -------------------------------------------------------------------
def _sub(schema: dict[str, Any], key: str | None) -> dict[str, Any]:
    """The schema of a member (key) or of an array's items (key None); {} when not described."""
    if key is None:
        items = schema.get("items")
        return items if isinstance(items, dict) else {}
    props = schema.get("properties", {})
    if key in props:
        return props[key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else {}


def _pixel_problems(value: Any, schema: dict[str, Any], where: str, out: list[str]) -> None:
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            out.append(f"{where}: string of {len(value)} chars")
        if BASE64_RUN.search(value):
            out.append(f"{where}: base64-looking run in {value[:80]!r}")
    elif isinstance(value, dict):
        for k, v in value.items():
            _pixel_problems(k, {}, f"{where}.<key>", out)
            _pixel_problems(v, _sub(schema, k), f"{where}.{k}", out)
    elif isinstance(value, list):
        cap = schema.get("maxItems", DEFAULT_MAX_ITEMS)
        if len(value) > cap:
            out.append(f"{where}: list of {len(value)} items (at most {cap})")
        for i, item in enumerate(value):
            if isinstance(item, list) and any(isinstance(x, int | float | list) and not isinstance(x, bool) for x in item):
                out.append(f"{where}[{i}]: nested list of numbers (image-like)")
            _pixel_problems(item, _sub(schema, None), f"{where}[{i}]", out)


async def _check(c, method: str, path: str, route, problems: list[str]) -> int:
    r = await c.request(method, path, headers=AUTH)
    raw = await r.read()
    if len(raw) > MAX_BODY:
        problems.append(f"{method} {path}: body of {len(raw)} bytes")
    if route.content_type == "application/json":
        assert r.content_type == "application/json", (path, r.content_type)
        _pixel_problems(await r.json(), route.response, f"{method} {path}", problems)
    else:
        text = raw.decode("utf-8")
        for n, line in enumerate(text.splitlines()):
            if len(line) > MAX_METRICS_LINE:
                problems.append(f"{method} {path} line {n}: {len(line)} chars")
            if BASE64_RUN.search(line):
                problems.append(f"{method} {path} line {n}: base64-looking run in {line[:80]!r}")
    return r.status


async def test_no_route_serves_anything_pixel_like(models_dir, vtest, tmp_path):
    c = await _client({"camera": {"pacing": "fast"}}, tmp_path)
    try:
        svc = c.svc
        await _until(lambda: len(svc.vectors) >= 20)
        problems: list[str] = []
        visited: set[tuple[str, str]] = set()
        gets = [r for r in ROUTES if r.method == "GET"]
        posts = sorted((r for r in ROUTES if r.method == "POST"), key=lambda r: r.path == "/v1/optout")  # optout last
        assert {r.method for r in ROUTES} == {"GET", "POST"} and posts[-1].path == "/v1/optout"
        for route in gets + posts:
            variants = [route.path]
            if any(p.name == "limit" for p in route.params):
                variants.append(f"{route.path}?limit=1000")
            for path in variants:
                status = await _check(c, route.method, path, route, problems)
                # the update routes refuse an empty request (no trusted keys / no body): a JSON error, checked too
                assert status == 200 or (route.path.startswith("/v1/ota") and 400 <= status < 500), (route.method, path, status)
            visited.add((route.method, route.path))
            if route.path == "/v1/vectors":  # the crawl saw real vectors, the most the API gives at once
                body = await (await c.get("/v1/vectors?limit=1000", headers=AUTH)).json()
                assert len(body["vectors"]) >= 20
        assert visited == {(r.method, r.path) for r in ROUTES}
        assert problems == []
        assert svc.privacy.optouts == 2 and len(svc.vectors) == 0  # the sim button, then /v1/optout
    finally:
        await c.close()


# -- (b) what leaves the analyzer -----------------------------------------------------------------
MAX_ARRAY = 400
_SCALARS = (str, int, float, bool, type(None), np.generic)


def _walk(obj: Any, where: str, seen: set[int], out: list[str], counts: dict[str, int]) -> None:
    if isinstance(obj, _SCALARS):
        if isinstance(obj, np.generic) and obj.dtype == np.uint8:
            out.append(f"{where}: uint8 scalar")
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    counts[type(obj).__name__] = counts.get(type(obj).__name__, 0) + 1
    if isinstance(obj, np.ndarray):
        if obj.dtype == np.uint8 or obj.dtype.hasobject or obj.dtype.kind in "SUV":
            out.append(f"{where}: array of dtype {obj.dtype}")
        if obj.ndim > 2:
            out.append(f"{where}: array with {obj.ndim} dimensions {obj.shape}")
        if obj.size > MAX_ARRAY:
            out.append(f"{where}: array of {obj.size} elements {obj.shape}")
    elif isinstance(obj, bytes | bytearray | memoryview):
        out.append(f"{where}: {type(obj).__name__} of {len(obj)} bytes")
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _walk(getattr(obj, f.name), f"{where}.{f.name}", seen, out, counts)
        extra = set(getattr(obj, "__dict__", {})) - {f.name for f in dataclasses.fields(obj)}
        for name in sorted(extra):
            _walk(getattr(obj, name), f"{where}.{name}", seen, out, counts)
    elif isinstance(obj, tuple | list | collections.deque):
        for i, item in enumerate(obj):
            _walk(item, f"{where}[{i}]", seen, out, counts)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _walk(k, f"{where}.<key>", seen, out, counts)
            _walk(v, f"{where}[{k!r}]", seen, out, counts)
    elif isinstance(obj, KalmanBox):
        for name, v in vars(obj).items():
            _walk(v, f"{where}.{name}", seen, out, counts)
    elif isinstance(obj, KalmanBank):  # every track's filter state: 20 floats a row, nothing else
        st = obj.state
        if st.dtype != np.float64 or st.ndim != 2 or st.shape[1] != 20 or set(vars(obj)) != {"state", "_free"}:
            out.append(f"{where}: a filter bank holding {st.dtype} {st.shape} and {sorted(vars(obj))}")
    else:  # anything else is unexpected in a result: it could hold a reference to the frame
        out.append(f"{where}: unexpected {type(obj).__module__}.{type(obj).__qualname__}")


async def test_analyzer_results_hold_no_pixels(models_dir, vtest, tmp_path):
    svc, _ = await build_service(sim_config({"privacy": {"audit_log": str(tmp_path / "audit.jsonl")}}),
                                 token_env={"CUECAM_API_TOKEN": TOKEN})
    cap = cv2.VideoCapture(str(VTEST))
    try:  # the service is built but not started: svc.analyzer is this test's alone
        problems: list[str] = []
        counts: dict[str, int] = {}
        n_vectors = n_tracks = 0
        for i in range(60):  # 6 s of footage: tracks confirmed, windows closed
            ok, bgr = cap.read()
            assert ok, f"vtest frame {i}"
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # as the replay camera hands it over
            res = svc.analyzer.process(image, i / 10.0)
            assert isinstance(res, FrameResult)
            _walk(res, f"frame{i}", set(), problems, counts)
            n_tracks += len(res.tracked)
            for v in res.vectors:
                n_vectors += 1
                assert type(v) is Vector
                for f in dataclasses.fields(v):
                    x = getattr(v, f.name)
                    assert x is None or (isinstance(x, str | float | int) and not isinstance(x, np.ndarray)), \
                        (f.name, type(x))
            # a frame's tracks as they were then: the filter's state copied (8 floats), not the live bank
            assert all(type(t) is Track and type(t.kf) is FrozenBox for t in res.tracked)
        assert n_tracks > 0 and n_vectors > 0, (n_tracks, n_vectors)
        assert counts.get("FrozenBox", 0) > 0 and counts.get("ndarray", 0) > 0  # the walk went all the way down
        assert problems == []
    finally:
        cap.release()
        await svc.stop()


# -- (c) the ring buffer's record -----------------------------------------------------------------
def test_the_vector_record_type_cannot_hold_pixels():
    assert not VECTOR_DTYPE.hasobject and VECTOR_DTYPE.subdtype is None
    byte_fields = []
    for name, (dt, *_) in VECTOR_DTYPE.fields.items():
        assert dt.subdtype is None and dt.shape == (), f"{name}: subarray {dt}"
        assert not dt.hasobject and dt.kind != "O", f"{name}: object field"
        assert dt.kind in "uifSb", f"{name}: {dt}"
        assert dt.fields is None, f"{name}: nested record"
        if dt.kind in "SUV":
            byte_fields.append((name, dt.itemsize))
    assert byte_fields == [("token", 32)]
    assert VECTOR_DTYPE.itemsize < 128  # a few dozen numbers, nothing more


@pytest.mark.parametrize("bad", [
    {"img": [[1, 2], [3, 4]]},
    {"s": "x" * 201},
    {"b": "QUJD" * 20},
    {"l": list(range(1001))},
])
def test_the_response_checks_catch_pixel_like_values(bad):
    out: list[str] = []
    _pixel_problems(bad, {}, "body", out)
    assert out


def test_the_result_walk_catches_pixels():
    out: list[str] = []
    _walk((np.zeros((8, 8, 3), np.uint8), np.zeros((30, 30)), b"\x00" * 10, object()), "r", set(), out, {})
    assert len(out) == 5, out  # uint8 + 3-d, > 400 elements, bytes, unknown object
