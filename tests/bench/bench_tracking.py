"""`make bench-tracking`: cuecam's tracker against the library trackers, on identical detections.

Sequences with known truth (tests/crowd.py: people walking through, stopping at displays, walking
in pairs and crossing, at 8-12 fps; plus the truth of the scripted scenes in
firmware/camera/scenes) are turned into detector-like input with one seeded perturbation
(firmware/inference/noise.py: misses of ~12 % plus bursts of 2-5 frames, 4 % jitter, 12 % of
boxes at weak scores 0.3-0.5, 0.3 false positives per frame; people who stand still at a display
score 0.35-0.5 half of the time). Every tracker gets the same boxes, scores and timestamps and
the same thresholds: 0.5 for the first association, 0.6 to start a track, 3 matches before a
track is reported, 3 s before a lost track is dropped. Their outputs are written as MOT files and
scored with the TrackEval-parity metrics of Roboflow's ``trackers.eval`` (HOTA, MOTA, IDF1, ID
switches). CPU time per frame is measured in the same run, each sequence passing through every
tracker in turn, the order rotating from one repetition to the next.

Prints ``key: value`` lines: tracking_* (cuecam), bytetrack_*, ocsort_*, sort_* and ratios.
The library trackers need numpy >= 2 and are installed only for this benchmark
(tests/bench/tracking-requirements.txt); the board's tracker is cuecam's own.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from firmware.inference.noise import NoiseSpec  # noqa: E402
from firmware.tracking.tracker import Tracker, TrackerConfig  # noqa: E402
from tests import crowd  # noqa: E402

HIGH, NEW, LOW, HITS, LOST_S = 0.5, 0.6, 0.25, 3, 3.0

Run = Callable[[list[tuple[np.ndarray, np.ndarray]], float], list[tuple[np.ndarray, np.ndarray]]]


def run_cuecam(dets: list[tuple[np.ndarray, np.ndarray]], fps: float) -> list[tuple[np.ndarray, np.ndarray]]:
    tracker = Tracker(TrackerConfig(high_score=HIGH, low_score=LOW, new_track_score=NEW, min_hits=HITS, max_lost_s=LOST_S))
    scale = np.array([crowd.W, crowd.H, crowd.W, crowd.H], dtype=np.float64)
    numbers: dict[str, int] = {}
    out = []
    for k, (boxes, scores) in enumerate(dets):
        tracks = tracker.update(boxes * scale, scores, k / fps, (crowd.W, crowd.H))
        ids = np.array([numbers.setdefault(tr.tid, len(numbers) + 1) for tr in tracks], dtype=np.int64)
        out.append((ids, np.array([tr.det_box for tr in tracks]).reshape(-1, 4) / scale))
    return out


def library(name: str) -> Run:
    import supervision as sv
    import trackers

    def run(dets: list[tuple[np.ndarray, np.ndarray]], fps: float) -> list[tuple[np.ndarray, np.ndarray]]:
        buffer = round(LOST_S * 30)  # the library counts the lost buffer in 30-fps frames
        if name == "bytetrack":
            tracker = trackers.ByteTrackTracker(lost_track_buffer=buffer, frame_rate=fps, track_activation_threshold=NEW,
                                                minimum_consecutive_frames=HITS, high_conf_det_threshold=HIGH)
        elif name == "ocsort":
            # OC-SORT has no weak-box stage: boxes under its threshold are neither matched nor start
            # tracks. Given every candidate (LOW) it scores far better here than at HIGH
            tracker = trackers.OCSORTTracker(lost_track_buffer=buffer, frame_rate=fps, minimum_consecutive_frames=HITS,
                                             high_conf_det_threshold=LOW)
        else:
            tracker = trackers.SORTTracker(lost_track_buffer=buffer, frame_rate=fps, track_activation_threshold=NEW,
                                           minimum_consecutive_frames=HITS)
        scale = np.array([crowd.W, crowd.H, crowd.W, crowd.H], dtype=np.float64)
        out = []
        for k, (boxes, scores) in enumerate(dets):
            keep = scores >= LOW  # the same candidates cuecam's tracker considers
            d = sv.Detections(xyxy=(boxes[keep] * scale).astype(np.float32), confidence=scores[keep].astype(np.float32),
                              class_id=np.zeros(int(keep.sum()), dtype=int))
            res = tracker.update(d, timestamp=k / fps)
            ok = res.tracker_id >= 0 if len(res) else np.zeros(0, dtype=bool)
            out.append((res.tracker_id[ok].astype(np.int64) + 1, res.xyxy[ok].reshape(-1, 4) / scale))
        return out

    return run


def sequences(quick: bool) -> list[crowd.Sequence]:
    kinds = [
        ("plaza", {"fps": 10.0}),
        ("stops", {"fps": 8.0, "stop_share": 0.8, "rate_per_min": 14.0}),
        ("busy", {"fps": 12.0, "rate_per_min": 40.0}),
        ("pairs", {"fps": 10.0, "pair_share": 0.6}),
    ]
    seeds = range(1) if quick else range(3)
    generated = [crowd.generate(f"{k}-{s}", 1000 * i + s, **kw) for i, (k, kw) in enumerate(kinds) for s in seeds]
    # the scripted scenes' truth (paths and heights, no pixels); weak_stop's shopper scores weakly standing
    from firmware.camera.scene import SCENES_DIR

    scenes = [crowd.from_scene(p, still_low=(0,) if p.stem == "weak_stop" else ()) for p in sorted(SCENES_DIR.glob("*.yaml"))]
    return generated + scenes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed per kind of sequence, one timing repetition")
    ap.add_argument("--reps", type=int, default=3, help="timing repetitions (the order of trackers rotates)")
    args = ap.parse_args()
    from trackers.eval import evaluate_mot_sequences

    runs: dict[str, Run] = {"tracking": run_cuecam, "bytetrack": library("bytetrack"), "ocsort": library("ocsort"),
                            "sort": library("sort")}
    names = list(runs)
    seqs = sequences(args.quick)
    seconds = dict.fromkeys(names, 0.0)
    frames = 0
    reps = 1 if args.quick else max(1, args.reps)
    with tempfile.TemporaryDirectory(prefix="cuecam-bench-tracking-") as tmp:
        gt_dir = Path(tmp) / "gt"
        for i, seq in enumerate(seqs):
            crowd.write_truth(seq, gt_dir / f"{seq.name}.txt")
            dets = crowd.detector_input(seq, NoiseSpec(seed=i))
            for rep in range(reps):
                order = names[(i + rep) % len(names):] + names[:(i + rep) % len(names)]
                for name in order:
                    t0 = time.process_time()
                    out = runs[name](dets, seq.fps)
                    seconds[name] += time.process_time() - t0
                    if rep == 0:
                        crowd.write_tracks(out, Path(tmp) / name / f"{seq.name}.txt")
            frames += len(seq.frames) * reps
        results = {name: evaluate_mot_sequences(gt_dir, Path(tmp) / name, metrics=["CLEAR", "HOTA", "Identity"])
                   for name in names}
    print(f"bench_tracking_sequences: {len(seqs)}")
    print(f"bench_tracking_scripted_scenes: {sum(s.name.startswith('scene-') for s in seqs)}")
    print(f"bench_tracking_frames: {sum(len(s.frames) for s in seqs)}")
    print(f"bench_tracking_people: {sum(len(s.people) for s in seqs)}")
    for name in names:
        agg = results[name].aggregate
        print(f"{name}_idf1: {agg.Identity.IDF1:.4f}")
        print(f"{name}_mota: {agg.CLEAR.MOTA:.4f}")
        print(f"{name}_hota: {agg.HOTA.HOTA:.4f}")
        print(f"{name}_id_switches: {agg.CLEAR.IDSW}")
        print(f"{name}_ms_per_frame: {1000.0 * seconds[name] / frames:.4f}")
    best_idf1 = max(results[n].aggregate.Identity.IDF1 for n in names if n != "tracking")
    best_mota = max(results[n].aggregate.CLEAR.MOTA for n in names if n != "tracking")
    print(f"tracking_idf1_vs_best_library: {results['tracking'].aggregate.Identity.IDF1 / best_idf1:.4f}")
    print(f"tracking_mota_vs_best_library: {results['tracking'].aggregate.CLEAR.MOTA / best_mota:.4f}")
    print(f"tracking_cpu_vs_bytetrack: {seconds['tracking'] / seconds['bytetrack']:.4f}")
    for seq in seqs:
        row = " ".join(f"{n}={results[n].sequences[seq.name].Identity.IDF1:.3f}/{results[n].sequences[seq.name].CLEAR.MOTA:.3f}"
                       for n in names)
        print(f"# {seq.name} idf1/mota: {row}")


if __name__ == "__main__":
    main()
