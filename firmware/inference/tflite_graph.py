"""Read (and minimally patch) a .tflite model's graph: find a custom operator, its tensors and
options, and re-point the graph's outputs at other tensors.

A .tflite file is a FlatBuffer (schema: tensorflow/lite/schema/schema.fbs). We read it with the
``flatbuffers`` package's generic table accessor and touch only the few fields below, by their
schema slot numbers, which the schema guarantees never change. The one edit we make rewrites the
subgraph's output tensor indices in place (same count, so no offsets move): the interpreter then
keeps those tensors intact after ``invoke`` and returns them, which is how the SSD detector gets
the raw box encodings and per-class scores that feed the model's own post-processing op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flatbuffers import encode, flexbuffers
from flatbuffers import number_types as nt
from flatbuffers.table import Table

from ..errors import ModelError

# schema.fbs slot numbers (field ids) of the fields read here
_MODEL_OPERATOR_CODES, _MODEL_SUBGRAPHS = 1, 2
_OPCODE_CUSTOM_CODE = 1
_SUBGRAPH_OUTPUTS, _SUBGRAPH_OPERATORS = 2, 3
_OP_OPCODE_INDEX, _OP_INPUTS, _OP_OUTPUTS, _OP_CUSTOM_OPTIONS = 0, 1, 2, 5
_TFLITE_IDENTIFIER = b"TFL3"


@dataclass(frozen=True)
class CustomOp:
    """A custom operator of the model's first subgraph: tensor indices and decoded options."""

    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any]


def _field(t: Table, slot: int) -> int:
    """Absolute position of a field's value, 0 when the field is absent."""
    o = t.Offset(4 + 2 * slot)
    return o + t.Pos if o else 0


def _vector(t: Table, slot: int) -> tuple[int, int]:
    """(start of the vector's elements, length); (0, 0) when absent."""
    o = t.Offset(4 + 2 * slot)
    return (t.Vector(o), t.VectorLen(o)) if o else (0, 0)


def _ints(buf: bytes | bytearray, start: int, n: int) -> tuple[int, ...]:
    return tuple(encode.Get(nt.Int32Flags.packer_type, buf, start + 4 * i) for i in range(n))


class TfliteGraph:
    """The first subgraph of a .tflite file held in memory."""

    def __init__(self, data: bytes, where: str) -> None:
        if len(data) < 8 or data[4:8] != _TFLITE_IDENTIFIER:
            raise ModelError(f"{where}: not a TFLite model (no TFL3 FlatBuffer identifier)")
        self.where = where
        self.buf = bytearray(data)
        try:
            self._model = Table(self.buf, encode.Get(nt.UOffsetTFlags.packer_type, self.buf, 0))
            start, n = _vector(self._model, _MODEL_SUBGRAPHS)
            if n < 1:
                raise ModelError(f"{where}: the model has no subgraph")
            self._subgraph = Table(self.buf, self._model.Indirect(start))
        except (IndexError, ValueError) as e:  # struct errors on a truncated buffer
            raise ModelError(f"{where}: the model's FlatBuffer is damaged ({e})") from e

    @property
    def outputs(self) -> tuple[int, ...]:
        start, n = _vector(self._subgraph, _SUBGRAPH_OUTPUTS)
        return _ints(self.buf, start, n)

    def custom_op(self, name: str) -> CustomOp | None:
        """The first custom operator called ``name``, or None."""
        codes, n_codes = _vector(self._model, _MODEL_OPERATOR_CODES)
        ops, n_ops = _vector(self._subgraph, _SUBGRAPH_OPERATORS)
        try:
            for k in range(n_ops):
                op = Table(self.buf, self._subgraph.Indirect(ops + 4 * k))
                pos = _field(op, _OP_OPCODE_INDEX)
                index = op.Get(nt.Uint32Flags, pos) if pos else 0
                if index >= n_codes:
                    continue
                code = Table(self.buf, self._model.Indirect(codes + 4 * index))
                pos = _field(code, _OPCODE_CUSTOM_CODE)
                if not pos or code.String(pos) != name.encode():
                    continue
                ins, n_in = _vector(op, _OP_INPUTS)
                outs, n_out = _vector(op, _OP_OUTPUTS)
                opt, n_opt = _vector(op, _OP_CUSTOM_OPTIONS)
                options = flexbuffers.Loads(bytes(self.buf[opt : opt + n_opt])) if n_opt else {}
                if not isinstance(options, dict):
                    raise ModelError(f"{self.where}: the options of {name} are not a map")
                return CustomOp(name, _ints(self.buf, ins, n_in), _ints(self.buf, outs, n_out), options)
        except (IndexError, ValueError, UnicodeDecodeError) as e:
            raise ModelError(f"{self.where}: the model's FlatBuffer is damaged ({e})") from e
        return None

    def with_outputs(self, outputs: tuple[int, ...]) -> bytes:
        """A copy of the model whose graph outputs are ``outputs`` (as many as it has now)."""
        start, n = _vector(self._subgraph, _SUBGRAPH_OUTPUTS)
        if len(outputs) != n:
            raise ModelError(f"{self.where}: the graph has {n} outputs; cannot re-point them to {len(outputs)} tensors")
        out = bytearray(self.buf)
        for i, tensor in enumerate(outputs):
            encode.Write(nt.Int32Flags.packer_type, out, start + 4 * i, tensor)
        return bytes(out)
