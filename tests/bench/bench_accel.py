#!/usr/bin/env python3
"""What a frame costs the board's CPU with each detector backend, on the same frames of vtest.avi.

Run with ``make bench-accel``. Prints ``key: value`` lines. The three paths run frame by frame,
interleaved (so other load on the machine hits all of them alike), over BENCH_FRAMES frames:

- cpu_ssd_ms_*: the SSD MobileNet v1 on the CPU (LiteRT, resize + invoke + decode + filters): all
  of a CPU board's detector work.
- imx500_host_ms_*: the AI Camera's share on the board: the sensor's metadata for the frame
  (CnnOutputTensor, CnnOutputTensorInfo) parsed into tensors (get_outputs), the person rows mapped
  through the sensor's crop (convert_inference_coords) and filtered. The network itself ran on
  the sensor; no pixel is touched.
- hailo_host_ms_*: the Hailo's share on the board: the frame resized to the HEF's 640 x 640, the
  device's per-class output (recorded here: the device is absent) read and filtered. The device's
  own time is not in it (published: a few ms for YOLOv8s, docs/board.md).
- *_vs_cpu: p50 of the path / p50 of cpu_ssd in the same run.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from firmware.camera.imx500 import Imx500Camera  # noqa: E402
from firmware.camera.imx500_fake import Imx500Rig, Recording, make_module, metadata_for  # noqa: E402
from firmware.config import Imx500CameraConfig, InferenceConfig  # noqa: E402
from firmware.inference import Devices, create_detector  # noqa: E402
from firmware.inference.base import SensorOutputs  # noqa: E402
from firmware.inference.hailo_fake import HailoRig  # noqa: E402
from firmware.inference.hailo_fake import make_module as hailo_module  # noqa: E402
from firmware.models import load_manifest  # noqa: E402
from tests.integration.test_accelerators import _frames  # noqa: E402

N = int(os.environ.get("BENCH_FRAMES", "300"))
MODELS = ROOT / "models"


def main() -> int:
    manifest = load_manifest(MODELS / "manifest.yaml")
    frames = _frames(ROOT / "media" / "vtest.avi", N)
    rec = Recording.load()
    cpu = create_detector(InferenceConfig(), MODELS, manifest)
    imx_det = create_detector(InferenceConfig(delegate="imx500", detector={"model": "imx500_ssd_mobilenetv2_fpnlite"}),
                              MODELS, manifest)
    rig = Imx500Rig(paced=False)
    cam = Imx500Camera(Imx500CameraConfig(type="imx500", size=[768, 576]), network=Path("/x.rpk"),
                       devices_module=make_module(rig), clock=rig.clock, monotonic_ns=rig.monotonic_ns)
    asyncio.run(cam.open())
    imx = cam._imx
    metadata = [{**metadata_for(rec.tensors(i)), "ScalerCrop": (0, 0, 4056, 3040)} for i in range(len(frames))]
    # the Hailo's outputs for these frames, recorded once from the stand-in, then played back
    hrig = HailoRig(models_dir=MODELS)
    live = hailo_module(hrig).Hailo("/x.hef")
    recorded = [live.run(cv2.resize(f, (640, 640))) for f in frames]
    hrig.recorded = recorded
    hailo = create_detector(InferenceConfig(delegate="hailo", detector={"model": "hailo_yolov8s_h8l"}), MODELS,
                            manifest, Devices(hailo=hailo_module(hrig)))
    t_cpu, t_imx, t_hailo = [], [], []
    for i, f in enumerate(frames):
        t0 = time.perf_counter()
        cpu.detect(f)
        t1 = time.perf_counter()
        md = metadata[i]
        outs = imx.get_outputs(md, add_batch=True)
        imx_det.detect(None, SensorOutputs(tuple(outs), (768, 576), cam._to_frame(md)))
        t2 = time.perf_counter()
        hailo.detect(f)
        t3 = time.perf_counter()
        t_cpu.append(t1 - t0)
        t_imx.append(t2 - t1)
        t_hailo.append(t3 - t2)
    asyncio.run(cam.close())
    hailo.close()
    out = {"frames": len(frames)}
    for name, ts in (("cpu_ssd", t_cpu), ("imx500_host", t_imx), ("hailo_host", t_hailo)):
        p50, p99 = np.percentile(np.array(ts) * 1000, [50, 99])
        out[f"{name}_ms_p50"], out[f"{name}_ms_p99"] = round(float(p50), 3), round(float(p99), 3)
    out["imx500_host_vs_cpu"] = round(out["imx500_host_ms_p50"] / out["cpu_ssd_ms_p50"], 4)
    out["hailo_host_vs_cpu"] = round(out["hailo_host_ms_p50"] / out["cpu_ssd_ms_p50"], 4)
    for k, v in out.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
