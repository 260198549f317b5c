"""Run a .tflite model with LiteRT (``ai_edge_litert``), falling back to ``tflite_runtime``.

The runner owns everything that is the same for every model: picking the runtime, loading the
Edge TPU delegate, checking the input tensor against the manifest, turning 0..255 pixels into the
model's quantized input (one 256-entry lookup table, or nothing when the mapping is the identity)
and dequantizing outputs. It is not thread-safe: one runner is used from one worker thread.
"""

from __future__ import annotations

import ctypes
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import InferenceError, ModelError
from ..models import ResolvedModel

RUNTIMES = {"litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}
EDGETPU_LIB = "libedgetpu.so.1"


def available_runtimes() -> list[str]:
    """Runtimes importable on this machine, preferred first."""
    found = []
    for name, module in RUNTIMES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        found.append(name)
    return found


def import_runtime(runtime: str) -> tuple[str, ModuleType]:
    order = list(RUNTIMES) if runtime == "auto" else [runtime]
    errors = []
    for name in order:
        try:
            return name, importlib.import_module(RUNTIMES[name])
        except ImportError as e:
            errors.append(f"{RUNTIMES[name]}: {e}")
    raise InferenceError(
        "no TFLite runtime could be imported (" + "; ".join(errors) + "); install one with "
        "`pip install ai-edge-litert` (preferred) or `pip install tflite-runtime`"
    )


def _input_lut(dtype: np.dtype[Any], scale: float, zero_point: int, lo: float, hi: float) -> np.ndarray | None:
    """Map pixel p in 0..255 to the model's input value; None when that is the identity."""
    real = lo + np.arange(256, dtype=np.float64) * (hi - lo) / 255.0
    if dtype == np.float32:
        return real.astype(np.float32)
    info = np.iinfo(dtype)
    q = real if scale == 0 else real / scale + zero_point
    lut = np.clip(np.rint(q), info.min, info.max).astype(dtype)
    if dtype == np.uint8 and np.abs(lut.astype(np.int32) - np.arange(256)).max() <= 1:
        return None  # raw pixels are the model's input to within one quantization step
    return lut


class ModelRunner:
    """One loaded interpreter with a fixed input contract."""

    def __init__(
        self,
        model: ResolvedModel,
        *,
        runtime: str = "auto",
        num_threads: int = 2,
        delegate: str = "cpu",
        load_delegate: Callable[[str], Any] | None = None,
        content: bytes | None = None,
    ) -> None:
        """``content``: the model's bytes as a decoder prepared them (e.g. with its graph outputs
        re-pointed, see tflite_graph); by default the verified file at ``model.path`` is loaded."""
        self.model = model
        self._content = content  # the interpreter reads from this buffer: keep it alive
        self.delegate = delegate
        self.runtime, mod = import_runtime(runtime)
        delegates = []
        if model.entry.accelerator == "edgetpu" and delegate != "edgetpu":
            raise ModelError(
                f"model {model.key!r} is compiled for the Edge TPU and cannot run on the CPU; "
                "set inference.delegate: edgetpu or choose a CPU model"
            )
        if delegate == "edgetpu":
            loader = load_delegate or mod.load_delegate
            try:
                # Probe the library first: when it is missing, the runtime's Delegate object
                # fails half-built and prints a spurious traceback when collected.
                ctypes.CDLL(EDGETPU_LIB)
                delegates.append(loader(EDGETPU_LIB))
            except (ValueError, OSError, RuntimeError) as e:
                raise InferenceError(
                    f"this board config asks for the Edge TPU, but {EDGETPU_LIB} could not be loaded ({e}); "
                    "plug in the Coral accelerator, install the `libedgetpu1-std` package, "
                    "or use a board config without `delegate: edgetpu`"
                ) from e
        try:
            source = {"model_path": str(model.path)} if content is None else {"model_content": content}
            self._interp = mod.Interpreter(**source, num_threads=num_threads, experimental_delegates=delegates or None)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{model.path}: {self.runtime} cannot load this model: {e}") from e
        inp = self._interp.get_input_details()
        if len(inp) != 1:
            raise ModelError(f"{model.path}: expected one input tensor, found {len(inp)}")
        self._in = inp[0]
        spec = model.entry.input
        shape = [int(v) for v in self._in["shape"]]
        dtype = np.dtype(self._in["dtype"])
        if shape != spec.shape or dtype.name != spec.dtype:
            raise ModelError(
                f"{model.path}: input is {shape} {dtype.name} but models/manifest.yaml says {spec.shape} {spec.dtype} "
                f"for {model.key!r}; the file does not match its manifest entry"
            )
        scale, zp = self._in["quantization"]
        self.input_shape = tuple(shape)
        self.input_size = (shape[2], shape[1])  # (width, height)
        self._lut = _input_lut(dtype, float(scale), int(zp), spec.range[0], spec.range[1])
        self.outputs = self._interp.get_output_details()

    def invoke(self, pixels: np.ndarray) -> None:
        """Run the model on an RGB uint8 image already resized to the model input."""
        if pixels.dtype != np.uint8 or pixels.shape != self.input_shape[1:]:
            raise ValueError(f"expected uint8 {self.input_shape[1:]}, got {pixels.dtype} {pixels.shape}")
        x = pixels if self._lut is None else self._lut[pixels]
        self._interp.set_tensor(self._in["index"], x[np.newaxis])
        self._interp.invoke()

    def raw_output(self, i: int) -> np.ndarray:
        """Output ``i`` of the last invoke as stored (quantized models: integers; its scale and
        zero point are in ``outputs[i]["quantization"]``). A copy, valid after the next invoke."""
        out: np.ndarray = self._interp.get_tensor(self.outputs[i]["index"])
        return out

    def tensor(self, index: int) -> tuple[np.ndarray, tuple[float, int]]:
        """A copy of a constant tensor (e.g. SSD anchors) by index, with its (scale, zero point)."""
        details = next((d for d in self._interp.get_tensor_details() if d["index"] == index), None)
        if details is None:
            raise ModelError(f"{self.model.path}: no tensor {index}")
        out: np.ndarray = self._interp.get_tensor(index)
        return out, details["quantization"]

    @property
    def content(self) -> bytes | None:
        """The bytes the interpreter was built from, when not the file itself."""
        return self._content

    def run(self, pixels: np.ndarray) -> list[np.ndarray]:
        """Invoke on an RGB uint8 image already resized to the model input; dequantized outputs."""
        self.invoke(pixels)
        return [dequantize(self.raw_output(i), d["quantization"]) for i, d in enumerate(self.outputs)]


def dequantize(t: np.ndarray, quantization: tuple[float, int]) -> np.ndarray:
    """Real values of a tensor stored with (scale, zero point); float tensors (scale 0) as they are."""
    scale, zp = quantization
    if not scale:
        return t
    return (t.astype(np.float32) - zp) * np.float32(scale)
