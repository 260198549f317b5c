#!/usr/bin/env python3
"""`make bench`, the signals on vtest.avi: one pass of the footage (768x576, 10 fps, 795 frames)
through the whole sim board service (real SSD and MoveNet, tracker, signal engine), as fast as
the models go. Prints ``key: value`` lines:

- vtest_frames: frames analysed (one pass, no loop).
- vtest_tokens_per_pass: session tokens the pass produced. A person who stays in view keeps one
  token, so fewer tokens for the same footage means fewer fragmented tracks (a token is never an
  identity: one person who leaves the view and comes back is two).
- vtest_vectors: sentiment vectors (one per token and 2 s window).
- vtest_null_window_share: share of vectors whose engagement and approach are both null (the
  window could not be trusted: a track under 1 s old, or seen in less than 35 % of the frames
  it was there for).
- vtest_capped_frame_share: share of frames where the detector had more candidates than
  inference.detector.max_detections (there may have been more people than boxes).
- vtest_tracked_per_frame: confirmed tracks matched per frame (people tracked).
- vtest_q_mean_<zone>: mean dwell satisfaction of the stays that ended in each zone, and
  vtest_stays_<zone> their number (the plaza's walkway is walked through: Q near 0 is right).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from firmware.app import build_service  # noqa: E402
from tests.conftest import sim_config  # noqa: E402


async def measure() -> dict[str, float | int]:
    loaded = sim_config({"camera": {"pacing": "fast", "loop": False}})
    svc, _ = await build_service(loaded, token_env={"CUECAM_API_TOKEN": "x" * 24})
    capped: list[bool] = []
    tracked: list[int] = []
    svc.pipeline.observers.append(lambda fid, t, res: (capped.append(res.detections.capped), tracked.append(res.tracks)))
    await svc.start()
    assert svc.pipeline_task is not None
    await asyncio.wait_for(asyncio.shield(svc.pipeline_task), timeout=1800)
    await svc.stop()
    recs = svc.vectors.since(0, svc.vectors.capacity).records
    out: dict[str, float | int] = {
        "vtest_frames": len(capped),
        "vtest_tokens_per_pass": len(set(recs["token"].tolist())),
        "vtest_vectors": len(recs),
        "vtest_null_window_share": float((np.isnan(recs["engagement"]) & np.isnan(recs["approach"])).mean()),
        "vtest_capped_frame_share": float(np.mean(capped)),
        "vtest_tracked_per_frame": float(np.mean(tracked)),
    }
    for zi, zone in enumerate(z.name for z in loaded.config.zones):
        if loaded.config.zones[zi].kind == "excluded":
            continue
        q = recs["satisfaction"][(recs["zone"] == zi) & ~np.isnan(recs["satisfaction"])]
        out[f"vtest_stays_{zone}"] = len(q)
        if len(q):
            out[f"vtest_q_mean_{zone}"] = float(q.mean())
    return out


def main() -> None:
    for k, v in asyncio.run(measure()).items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
