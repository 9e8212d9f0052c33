"""Weight-only quantization: int8 and int4 weights, kept quantized inside the compiled loop.

One format serves both widths. A weight W stored [in, ...] (a linear layer's [in, out], the
embedding's [D, V]) is cut along its first axis into groups of ``group`` rows; row j of group g
of column o is

    W[g * group + j, o] = scale[g, o] * q[g * group + j, o] + offset[g, o]    (offset: or 0)

- int8: q int8 in [-127, 127]. Quantized here symmetrically (no offset) with one scale per output
  column (group = in); a GGUF file's Q8_0 blocks load as they are (group 32, no offset), and its
  Q4_1 blocks exactly as int8 with an offset.
- int4: q in [0, 15], asymmetric (scale and offset = the group's minimum, llama.cpp's Q4_1),
  group 32 or 64, packed two to a byte: within a group, byte j holds row j in its low nibble
  and row j + group/2 in its high nibble, so q is uint8 [in / 2, ...]. A GGUF file's Q4_1 blocks
  are exactly this layout, transposed.

scale and offset are float16, as in GGUF files. Quantizing happens once, on the host (numpy);
``dequantize`` runs inside the compiled forward, so the stored arrays stay int8/uint8. With the
``int4`` mode the embedding and the LM head stay int8 (as llama.cpp's Q4 files keep them): the
output distribution is the most sensitive product, and it is one matrix.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

BITS = {"int8": 8, "int4": 4}  # a quantization mode's bit width
MODES = {bits: mode for mode, bits in BITS.items()}


def check_quant(quant, where: str = "quant") -> int | None:
    """The bit width of a quantization mode: None (no quantization), "int8" or "int4";
    ValueError naming ``where`` otherwise."""
    if quant is None:
        return None
    if quant not in BITS:
        raise ValueError(f"{where} must be null, int8 or int4, got {quant!r}")
    return BITS[quant]


def check_group(rows: int, bits: int, group: int | None, where: str) -> int:
    """The group size for a weight with ``rows`` input rows (None: the width's default); ValueError
    naming ``where`` unless it divides ``rows`` (and is even for int4)."""
    if group is None:  # int8: one scale per output column; int4: groups of 32 rows
        group = rows if bits == 8 else 32
    if isinstance(group, bool) or not isinstance(group, int | np.integer) or group < 1:
        raise ValueError(f"{where}: group must be an integer >= 1, got {group!r}")
    if rows % group or (bits == 4 and group % 2):
        need = "be even and divide" if bits == 4 else "divide"
        raise ValueError(f"{where}: group {group} must {need} the {rows} input rows")
    return int(group)


@dataclasses.dataclass(frozen=True)
class QuantizedTensor:
    """A quantized weight on the host, in our [in, ...] storage (see the module docstring).

    q: int8 [in, ...] (bits 8) or uint8 [in / 2, ...] (bits 4, packed); scale, offset: float16
    [in / group, ...]; offset None for symmetric int8.
    """

    q: np.ndarray
    scale: np.ndarray
    offset: np.ndarray | None
    bits: int

    @property
    def rows(self) -> int:
        return stored_rows(self.q, self.bits)

    @property
    def shape(self) -> tuple[int, ...]:
        """The weight's shape in our storage, [in, ...]."""
        return (self.rows, *self.q.shape[1:])

    @property
    def group(self) -> int:
        return self.rows // self.scale.shape[0]

    def to_int8(self) -> QuantizedTensor:
        """The same values as int8 (exact: int4 nibbles unpacked, offset kept)."""
        if self.bits == 8:
            return self
        return QuantizedTensor(unpack_int4(self.q, self.group).astype(np.int8), self.scale, self.offset, 8)

    def regrouped(self, group: int) -> QuantizedTensor:
        """The same values in groups of ``group`` rows, a divisor of this tensor's group (exact:
        each group's scale and offset repeated, int4 nibbles repacked)."""
        if self.group % group:
            raise ValueError(f"group {group} does not divide the tensor's group {self.group}")
        repeat = lambda x: None if x is None else np.repeat(x, self.group // group, axis=0)
        values = pack_int4(unpack_int4(self.q, self.group), group) if self.bits == 4 else self.q
        return QuantizedTensor(values, repeat(self.scale), repeat(self.offset), self.bits)

    def dequantize(self) -> np.ndarray:
        """float32 [in, ...]."""
        return np.asarray(dequantize(self.q, self.scale, self.offset, self.bits, np.float32))


def quantize(w: np.ndarray, bits: int, group: int | None = None, where: str = "weight") -> QuantizedTensor:
    """Quantize a float weight stored [in, ...] to ``bits`` (8: symmetric, default one scale per
    output column; 4: asymmetric min/max groups, default 32 rows). ``where`` names it in errors."""
    w = np.asarray(w, np.float32)
    group = check_group(w.shape[0], bits, group, where)
    g = w.reshape(w.shape[0] // group, group, *w.shape[1:])  # [G, group, ...]
    if bits == 8:
        scale = (np.abs(g).max(axis=1) / 127).astype(np.float16)
        s = np.where(scale == 0, 1, scale).astype(np.float32)[:, None]
        q = np.clip(np.rint(g / s), -127, 127).astype(np.int8).reshape(w.shape)
        return QuantizedTensor(q, scale, None, 8)
    low, high = g.min(axis=1), g.max(axis=1)
    offset = low.astype(np.float16)
    scale = ((high - offset.astype(np.float32)) / 15).astype(np.float16)
    s = np.where(scale == 0, 1, scale).astype(np.float32)[:, None]
    q = np.clip(np.rint((g - offset.astype(np.float32)[:, None]) / s), 0, 15).astype(np.uint8)
    return QuantizedTensor(pack_int4(q.reshape(w.shape), group), scale, offset, 4)


def stored_rows(q, bits: int) -> int:
    """The input rows of a weight whose q is stored [in, ...] (int8) or packed [in / 2, ...] (int4)."""
    return q.shape[0] * (2 if bits == 4 else 1)


def pack_int4(q: np.ndarray, group: int) -> np.ndarray:
    """uint8 [in, ...] values 0..15 -> uint8 [in / 2, ...]: in each group, row j low, row j + group/2 high."""
    g = q.reshape(q.shape[0] // group, 2, group // 2, *q.shape[1:]).astype(np.uint8)
    return (g[:, 0] | (g[:, 1] << 4)).reshape(q.shape[0] // 2, *q.shape[1:])


def unpack_int4(packed, group: int):
    """The inverse of ``pack_int4`` (numpy or jax arrays): [in / 2, ...] -> [in, ...] values 0..15."""
    xp = np if isinstance(packed, np.ndarray) else jnp
    g = packed.reshape(packed.shape[0] * 2 // group, group // 2, *packed.shape[1:])
    q = xp.concatenate([g & 15, g >> 4], axis=1)  # [G, group, ...]
    return q.reshape(packed.shape[0] * 2, *packed.shape[1:])


def dequantize(q, scale, offset, bits: int, dtype):
    """``scale * q + offset`` group by group, in ``dtype`` (jax or numpy inputs): [in, ...].

    q: int8 [in, ...] or packed uint8 [in / 2, ...] (bits 4); scale, offset: [in / group, ...].
    Inside a jitted forward XLA fuses the unpacking and scaling into one elementwise pass over q.
    """
    xp = np if isinstance(q, np.ndarray) else jnp
    rows = stored_rows(q, bits)
    group = rows // scale.shape[0]
    if bits == 4:
        q = unpack_int4(q, group)
    g = q.reshape(rows // group, group, *q.shape[1:]).astype(dtype)
    w = g * xp.asarray(scale, dtype)[:, None]
    if offset is not None:
        w = w + xp.asarray(offset, dtype)[:, None]
    return w.reshape(rows, *q.shape[1:])


class QuantizedWeight(nnx.Module):
    """A quantized [in, ...] weight as parameters (q, scale, offset); ``bits`` is static."""

    def __init__(self, weight: QuantizedTensor, put=jnp.asarray):
        """``put``: host array -> device array (default: one device; ``sharding.place`` shards)."""
        self.q = nnx.Param(put(weight.q))
        self.scale = nnx.Param(put(weight.scale))
        self.offset = None if weight.offset is None else nnx.Param(put(weight.offset))
        self.bits = weight.bits

    def host(self) -> QuantizedTensor:
        offset = None if self.offset is None else np.asarray(self.offset[...])
        return QuantizedTensor(np.asarray(self.q[...]), np.asarray(self.scale[...]), offset, self.bits)

    def columns(self, index, dtype):
        """Dequantized columns ``index`` [...] of a [D, V] weight -> [D, ...] (an embedding lookup)."""
        offset = None if self.offset is None else jnp.take(self.offset[...], index, axis=1)
        q, scale = jnp.take(self.q[...], index, axis=1), jnp.take(self.scale[...], index, axis=1)
        return dequantize(q, scale, offset, self.bits, dtype)

    def __call__(self, dtype):
        """The whole weight, dequantized: [in, ...] in ``dtype``."""
        offset = None if self.offset is None else self.offset[...]
        return dequantize(self.q[...], self.scale[...], offset, self.bits, dtype)
