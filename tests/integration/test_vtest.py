"""The whole pipeline on vtest.avi with the real SSD model, checked against the model run
directly (the runtime's own Interpreter and the model's own post-processing op, not cuecam's
runner or decoding) on the same frames."""

from __future__ import annotations

import asyncio

import cv2
import numpy as np
import pytest

from firmware.app import build_service
from firmware.inference.runner import import_runtime
from firmware.tracking.tracker import iou_matrix
from tests.conftest import sim_config

N_FRAMES = 120


MAX_BOXES = 100
FRAME_DTYPE = np.dtype([("frame_id", "u8"), ("t_mono", "f8"), ("count", "u2"), ("boxes", "f4", (MAX_BOXES, 4)),
                        ("scores", "f4", (MAX_BOXES,)), ("tracks", "u2")])


async def _run_service(n_frames: int):
    # no zones: this compares every detection with the model run directly (an excluded zone
    # would drop the people standing in it before the tracker)
    # and no nesting filter: every person box the model's own op returns at 0.5 must be among ours
    loaded = sim_config({"camera": {"pacing": "fast", "loop": False}, "zones": [],
                         "inference": {"detector": {"max_contained": None}}})
    svc, _ = await build_service(loaded, token_env={"CUECAM_API_TOKEN": "x" * 20})
    seen: list[np.void] = []

    def observe(frame_id: int, t_mono: float, res) -> None:  # the in-process observer hook
        rec = np.zeros((), FRAME_DTYPE)
        n = len(res.detections)
        rec["frame_id"], rec["t_mono"], rec["count"], rec["tracks"] = frame_id, t_mono, n, res.tracks
        rec["boxes"][:n], rec["scores"][:n] = res.detections.boxes[:MAX_BOXES], res.detections.scores[:MAX_BOXES]
        seen.append(rec)

    svc.pipeline.observers.append(observe)
    await svc.start()
    for _ in range(600):
        if svc.pipeline.stats.frames_processed >= n_frames:
            break
        await asyncio.sleep(0.05)
    await svc.stop()
    return svc, np.array(seen, dtype=FRAME_DTYPE)


@pytest.fixture(scope="module")
def processed(models_dir, vtest):
    """Run the service (no HTTP) on the first N_FRAMES of vtest as fast as possible."""
    return asyncio.run(_run_service(N_FRAMES))


def _direct_people(frames: list[np.ndarray], threshold: float) -> list[np.ndarray]:
    """Person boxes straight from the interpreter and the model's own post-processing op (10
    boxes at most, over all classes): no cuecam code in the loop."""
    _, mod = import_runtime("auto")
    it = mod.Interpreter(model_path="models/coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite", num_threads=2)
    it.allocate_tensors()
    inp = it.get_input_details()[0]["index"]
    outs = [d["index"] for d in it.get_output_details()]
    result = []
    for bgr in frames:
        x = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (300, 300), interpolation=cv2.INTER_LINEAR)
        it.set_tensor(inp, x[None])
        it.invoke()
        boxes, classes, scores, count = (it.get_tensor(i) for i in outs)
        n = int(count[0])
        keep = (classes[0, :n] == 0) & (scores[0, :n] >= threshold)
        result.append(boxes[0, :n][keep][:, [1, 0, 3, 2]])
    return result


def test_pipeline_matches_the_model_run_directly(processed):
    svc, recs = processed
    assert len(recs) >= N_FRAMES
    recs = recs[:N_FRAMES]
    # fast pacing waits for inference: every frame is processed, none dropped, ids consecutive
    assert svc.pipeline.stats.frames_dropped == 0
    assert list(recs["frame_id"]) == list(range(1, N_FRAMES + 1))
    # timestamps follow the footage's own 10 fps timeline even when processed faster
    assert np.allclose(np.diff(recs["t_mono"]), 0.1, atol=1e-6)

    cap = cv2.VideoCapture("media/vtest.avi")
    frames = [cap.read()[1] for _ in range(N_FRAMES)]
    cap.release()
    direct = _direct_people(frames, 0.5)
    counts = recs["count"].astype(int)
    assert (counts <= svc.config.inference.detector.max_detections).all()
    h, w = frames[0].shape[:2]
    for r, d in zip(recs, direct, strict=False):
        # every person the model's own op finds at 0.5 is among ours (the op also returns boxes
        # wider than a person, which we drop, and never more than 10 boxes, which we do not cap)
        d = np.clip(d, 0, 1)
        d = d[(d[:, 2] - d[:, 0]) * w <= svc.config.inference.detector.max_aspect * (d[:, 3] - d[:, 1]) * h]
        ours = r["boxes"][: r["count"]][r["scores"][: r["count"]] >= 0.5]
        assert len(ours) >= len(d)
        if len(d):
            assert iou_matrix(d.astype(np.float64), ours.astype(np.float64)).max(axis=1).min() >= 0.99


def test_the_detector_sees_the_people_in_the_plaza(processed):
    svc, recs = processed
    floor = svc.config.inference.detector.score_threshold
    counts = np.array([(r["scores"][: r["count"]] >= 0.5).sum() for r in recs])
    heights = np.concatenate([(r["boxes"][: r["count"], 3] - r["boxes"][: r["count"], 1])[r["scores"][: r["count"]] >= 0.5]
                              * 576 for r in recs])
    # people-sized boxes: median ~71 px tall on this footage (../shared/SIGNALS-BACKGROUND.md)
    assert 50 <= np.median(heights) <= 100 and heights.max() < 300
    # vtest.avi: 3-9 people per frame at score 0.5 (../shared/ASSETS.md)
    assert (counts >= 2).mean() >= 0.9
    assert 3 <= counts.mean() <= 9
    # the tracker reports people, not every candidate: about as many as confident boxes
    tracks = recs["tracks"].astype(int)
    assert 2 <= tracks[20:].mean() <= 9
    for r in recs:
        b = r["boxes"][: r["count"]]
        assert ((b >= 0) & (b <= 1)).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (r["scores"][: r["count"]] >= floor).all() and (r["scores"][r["count"] :] == 0).all()


async def _run_signals():
    """The whole footage once (795 frames) through the service, as fast as the models go."""
    loaded = sim_config({"camera": {"pacing": "fast", "loop": False}})
    svc, _ = await build_service(loaded, token_env={"CUECAM_API_TOKEN": "x" * 20})
    ended: list[set[str]] = []
    svc.pipeline.observers.append(lambda fid, t, res: ended.append({tr.tid for tr in svc.analyzer.tracker.ended}))
    await svc.start()
    assert svc.pipeline_task is not None
    await asyncio.wait_for(asyncio.shield(svc.pipeline_task), timeout=600)
    await svc.stop()
    recs = svc.vectors.since(0, svc.vectors.capacity).records
    return svc, recs, set().union(*ended)


@pytest.fixture(scope="module")
def signals(models_dir, vtest):
    return asyncio.run(_run_signals())


def test_vtest_gives_vectors_with_fresh_tokens(signals):
    svc, recs, ended = signals
    assert svc.pipeline.stats.frames_processed == 795
    tokens = [t.decode() for t in recs["token"]]
    assert len(recs) >= 200 and len(set(tokens)) >= 30
    assert all(len(t) == 32 and int(t, 16) >= 0 for t in tokens)
    for tok in set(tokens):
        mine = recs[recs["token"] == tok.encode()]
        starts = mine["t_start"]
        assert (np.diff(starts) > 0).all(), "one vector per token per window"
        # a token's windows form one run: once a track has ended its token is never used again
        gaps = np.diff(starts) / svc.config.signals.window_s
        assert (gaps <= 2.0 + 1e-6).all(), f"token {tok[:8]} came back after {gaps.max():.0f} windows"
    assert ended, "tracks end on this footage"


def test_vtest_signals_stay_in_range(signals):
    _, recs, _ = signals
    for key, lo in (("engagement", 0.0), ("approach", -1.0), ("satisfaction", -1.0)):
        v = recs[key][~np.isnan(recs[key])]
        assert len(v) and (v >= lo).all() and (v <= 1.0).all(), key
        c = recs[f"{key}_conf"]
        assert ((c >= 0) & (c <= 1)).all()
    assert np.allclose(recs["t_end"] - recs["t_start"], 2.0)
    assert (recs["speed"] >= 0).all() and (recs["speed"] < 10).all()
    assert np.isnan(recs["engagement"]).mean() < 0.5  # most windows are trustworthy


def test_vtest_aggregates_are_plausible(signals):
    from firmware.signals.schema import aggregates

    svc, recs, _ = signals
    cells = {c["zone"]: c for c in aggregates(recs, [(z.name, z.kind) for z in svc.config.zones])}
    assert "staff-path" not in cells  # excluded: no cell, and no vector names it
    staff = svc.zone_names.index("staff-path")
    assert not (recs["zone"] == staff).any()
    # the plaza is a thoroughfare: most people walk the walkway; some cross the sign's area
    assert cells["walkway"]["tracks"] > cells["plaza-sign"]["tracks"] >= 3
    assert cells["walkway"]["engagement_mean"] == 0.0  # engagement exists only at an attraction
    assert 0.0 <= cells["plaza-sign"]["engagement_mean"] < 0.5  # passers-by, not an audience
    assert cells["walkway"]["stays_ended"] >= 10
    shares = [cells[z]["approaching_share"] + cells[z]["avoiding_share"] for z in ("walkway", "plaza-sign")]
    assert all(0.0 < s <= 1.0 for s in shares)
