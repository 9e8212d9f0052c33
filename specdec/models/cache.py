"""The KV cache: a fixed-capacity pytree with per-row lengths."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_IN_PLACE_MAX_BATCH = 16  # rows written by per-row in-place updates; larger batches scatter


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every cached layer, written in place.

    k, v:     tuples of L arrays [B, Hkv, Dh, S]  keys and values, one array per cached layer,
                                                  S = capacity slots per row; slots are the minor
                                                  axis, the layout XLA:CPU's attention products
                                                  read without a transpose per step
    lengths:  [B] int32                           valid slots per row; row b's next token goes to
                                                  slot lengths[b]

    The model appends T tokens at slots lengths[b] .. lengths[b]+T-1 and advances
    lengths by T. Rolling back (rejected draft tokens) only moves ``lengths`` back:
    stale slots are overwritten by the next append and are never attended to,
    because a query only sees slots before its own.

    One array per layer (not one stacked [L, ...] array): XLA:CPU rewrites the whole
    operand of a scatter, so a stacked cache would copy every layer at every layer.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    lengths: jax.Array

    @classmethod
    def init(
        cls, n_layers: int, batch: int, n_kv_heads: int, capacity: int, head_dim: int, dtype=jnp.float32
    ):
        shape = (batch, n_kv_heads, head_dim, capacity)
        k = tuple(jnp.zeros(shape, dtype) for _ in range(n_layers))
        v = tuple(jnp.zeros(shape, dtype) for _ in range(n_layers))
        return cls(k, v, jnp.zeros((batch,), jnp.int32))

    @property
    def n_layers(self) -> int:
        return len(self.k)

    @property
    def capacity(self) -> int:
        return self.v[0].shape[3]

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]

    def with_lengths(self, lengths: jax.Array) -> KVCache:
        """Same buffers, new per-row lengths ([B] or a scalar for all rows): rollback, no copy."""
        return dataclasses.replace(
            self, lengths=jnp.broadcast_to(jnp.asarray(lengths, jnp.int32), (self.batch,))
        )

    def write(self, layer: int, k_new: jax.Array, v_new: jax.Array) -> KVCache:
        """Write k_new, v_new [B, T, Hkv, Dh] of one layer at slots lengths[b] + t.

        Does not advance lengths (the forward does that once, after all layers). Callers keep
        lengths[b] + T <= capacity (``generate`` sizes the capacity for it).
        """
        to_layout = (0, 2, 3, 1)  # [B, T, Hkv, Dh] -> [B, Hkv, Dh, T]
        return self._put(layer, jnp.transpose(k_new, to_layout), jnp.transpose(v_new, to_layout))

    def move(self, source: jax.Array) -> KVCache:
        """Copy slot source[b, t] to slot lengths[b] + t in every layer (source [B, T]; a token
        tree's accepted path into consecutive slots). Lengths are unchanged."""
        slots = source[:, None, None, :]
        out = self
        for layer in range(self.n_layers):  # gather [B, Hkv, Dh, T] from the old buffers, write in place
            keys = jnp.take_along_axis(self.k[layer], slots, axis=3)
            values = jnp.take_along_axis(self.v[layer], slots, axis=3)
            out = out._put(layer, keys, values)
        return out

    def _put(self, layer: int, keys: jax.Array, values: jax.Array) -> KVCache:
        """Write keys, values [B, Hkv, Dh, T] (the storage layout) of one layer at slots lengths[b] + t."""
        B, T = keys.shape[0], keys.shape[3]

        def put(buffers, new):
            buffer = buffers[layer]
            new = new.astype(buffer.dtype)
            if B <= _IN_PLACE_MAX_BATCH:
                # One dynamic_update_slice per row: XLA updates those in place, where a scatter
                # rewrites the whole buffer. A block that would run past the capacity is clamped
                # back by XLA; rows never write there (generate sizes the capacity).
                for b in range(B):
                    buffer = jax.lax.dynamic_update_slice(buffer, new[b : b + 1], (b, 0, 0, self.lengths[b]))
            else:  # large batches: one scatter (a per-row loop would unroll B updates per layer)
                slots = self.lengths[:, None] + jnp.arange(T)[None, :]  # [B, T]
                rows = jnp.arange(B)[:, None]
                buffer = buffer.at[rows, :, :, slots].set(jnp.moveaxis(new, 3, 1), mode="drop")
            return (*buffers[:layer], buffer, *buffers[layer + 1 :])

        return dataclasses.replace(self, k=put(self.k, keys), v=put(self.v, values))
