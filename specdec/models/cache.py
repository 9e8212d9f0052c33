"""The KV cache: a fixed-capacity pytree with per-row lengths."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every cached layer, written in place.

    k, v:     [L, B, Hkv, S, Dh]  L cached layers, S = capacity slots per row
    lengths:  [B] int32           valid slots per row; the next token of row b goes to slot lengths[b]

    The model appends T tokens at slots lengths[b] .. lengths[b]+T-1 and advances
    lengths by T. Rolling back (rejected draft tokens) only moves ``lengths`` back:
    stale slots are overwritten by the next append and are never attended to,
    because a query only sees slots before its own.
    """

    k: jax.Array
    v: jax.Array
    lengths: jax.Array

    @classmethod
    def init(
        cls, n_layers: int, batch: int, n_kv_heads: int, capacity: int, head_dim: int, dtype=jnp.float32
    ):
        shape = (n_layers, batch, n_kv_heads, capacity, head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def with_lengths(self, lengths: jax.Array) -> KVCache:
        """Same buffers, new per-row lengths ([B] or a scalar for all rows): rollback, no copy."""
        return dataclasses.replace(
            self, lengths=jnp.broadcast_to(jnp.asarray(lengths, jnp.int32), (self.batch,))
        )

    def write(self, layer: int, k_new: jax.Array, v_new: jax.Array) -> KVCache:
        """Write k_new, v_new [B, T, Hkv, Dh] of one layer at slots lengths[b] + t.

        Does not advance lengths (the forward does that once, after all layers).
        Slots past the capacity are dropped.
        """
        B, T = k_new.shape[:2]
        slots = self.lengths[:, None] + jnp.arange(T)[None, :]  # [B, T]
        rows = jnp.arange(B)[:, None]  # [B, 1]
        k = self.k.at[layer, rows, :, slots].set(k_new.astype(self.k.dtype), mode="drop")
        v = self.v.at[layer, rows, :, slots].set(v_new.astype(self.v.dtype), mode="drop")
        return dataclasses.replace(self, k=k, v=v)
