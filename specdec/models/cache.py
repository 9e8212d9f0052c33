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

    k:        tuple of L arrays [B Hkv, Dh, S]   keys, one array per cached layer: row b's KV head
                                                 h is entry b Hkv + h; S = capacity slots per row
    v:        tuple of L arrays [B Hkv, S, Dh]   values (slots major, unlike the keys)
    lengths:  [B] int32                          valid slots per row; row b's next token goes to
                                                 slot lengths[b]

    The model appends T tokens at slots lengths[b] .. lengths[b]+T-1 and advances
    lengths by T. Rolling back (rejected draft tokens) only moves ``lengths`` back:
    stale slots are overwritten by the next append and are never attended to,
    because a query only sees slots before its own.

    Per head, keys are a [Dh, S] matrix and values an [S, Dh] one: the right operands of the two
    attention products q k [T G, S] and w v [T G, Dh] as they are, each read with its output's
    minor axis contiguous. Rows and heads are merged into the products' one batch axis (a
    [B, Hkv, ...] buffer needs a reshape there, which made XLA copy every layer's cache at every
    step). On XLA:CPU, keys stored [S, Dh] made q k 1.5x slower at B = 1 and 2-10x at B = 8-32
    (a batch of [T G, Dh] x [Dh, S] products with Dh minor in both operands); values stored
    [Dh, S] made w v 1.1x slower at B = 1 and 1.7x at B = 8, S = 2048 (docs/benchmarks.md).
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
        k, v = (
            tuple(jnp.zeros(shape, dtype) for _ in range(n_layers))
            for shape in entries_shapes(batch, n_kv_heads, capacity, head_dim)
        )
        return cls(k, v, jnp.zeros((batch,), jnp.int32))

    @property
    def n_layers(self) -> int:
        return len(self.k)

    @property
    def capacity(self) -> int:
        return self.v[0].shape[_V_SLOTS]

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]

    @property
    def n_kv_heads(self) -> int:
        return self.k[0].shape[0] // self.batch

    def with_lengths(self, lengths: jax.Array) -> KVCache:
        """Same buffers, new per-row lengths ([B] or a scalar for all rows): rollback, no copy."""
        return dataclasses.replace(
            self, lengths=jnp.broadcast_to(jnp.asarray(lengths, jnp.int32), (self.batch,))
        )

    @classmethod
    def block(cls, entries, lengths: jax.Array) -> KVCache:
        """A cache holding only new entries: ``entries`` one (keys [B Hkv, Dh, T], values
        [B Hkv, T, Dh]) pair per layer; ``lengths`` [B], the slots they follow (``append``
        writes them at the receiving cache's own lengths, the same ones in the decode loop)."""
        return cls(tuple(k for k, _ in entries), tuple(v for _, v in entries), lengths)

    def padded(self, width: int) -> KVCache:
        """This block with zero entries after its own, to ``width`` slots (a fixed shape)."""

        def pad(buffers, slots):
            widths = [(0, 0)] * 3
            widths[slots] = (0, width - self.capacity)
            return tuple(jnp.pad(x, widths) for x in buffers)

        return dataclasses.replace(self, k=pad(self.k, _K_SLOTS), v=pad(self.v, _V_SLOTS))

    def append(self, block: KVCache) -> KVCache:
        """Write ``block``'s entries (a ``Transformer`` pass with ``write=False``) at slots
        lengths[b] + t of every layer and advance lengths by its width."""
        out = self
        for layer in range(self.n_layers):
            out = out.put(layer, block.k[layer], block.v[layer])
        return out.with_lengths(self.lengths + block.capacity)

    def move(self, source: jax.Array) -> KVCache:
        """Copy slot source[b, t] to slot lengths[b] + t in every layer (source [B, T]; a token
        tree's accepted path into consecutive slots). Lengths are unchanged."""
        source = jnp.repeat(source, self.n_kv_heads, axis=0)  # [B Hkv, T]
        out = self
        for layer in range(self.n_layers):  # gather from the old buffers, write in place
            keys = jnp.take_along_axis(self.k[layer], source[:, None, :], axis=_K_SLOTS)
            values = jnp.take_along_axis(self.v[layer], source[:, :, None], axis=_V_SLOTS)
            out = out.put(layer, keys, values)
        return out

    def put(self, layer: int, keys: jax.Array, values: jax.Array) -> KVCache:
        """Write keys [B Hkv, Dh, T] and values [B Hkv, T, Dh] (the storage layout, see
        ``cache_layout``) of one layer at slots lengths[b] + t. Does not advance lengths (the
        forward does that once, after all layers). Callers keep lengths[b] + T <= capacity
        (``generate`` sizes the capacity for it)."""
        B, H = self.batch, self.n_kv_heads

        def one(buffers, new, axis):
            buffer = buffers[layer]
            new = new.astype(buffer.dtype)
            if B <= _IN_PLACE_MAX_BATCH:
                # One dynamic_update_slice per row: XLA updates those in place, where a scatter
                # rewrites the whole buffer. A block that would run past the capacity is clamped
                # back by XLA; rows never write there (generate sizes the capacity).
                for b in range(B):
                    start = [b * H, 0, 0]
                    start[axis] = self.lengths[b]
                    buffer = jax.lax.dynamic_update_slice(buffer, new[b * H : (b + 1) * H], start)
            else:  # large batches: one scatter (a per-row loop would unroll B updates per layer)
                index = list(jnp.indices(new.shape, sparse=True))  # [B Hkv, 1, 1], [1, n1, 1], [1, 1, n2]
                index[axis] = jnp.repeat(self.lengths, H)[:, None, None] + index[axis]  # slots
                buffer = buffer.at[tuple(index)].set(new, mode="drop")
            return (*buffers[:layer], buffer, *buffers[layer + 1 :])

        return dataclasses.replace(self, k=one(self.k, keys, _K_SLOTS), v=one(self.v, values, _V_SLOTS))


def cache_layout(k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """New keys and values [B, T, Hkv, Dh] in the storage layout: keys [B Hkv, Dh, T], values
    [B Hkv, T, Dh]."""
    B, T, H, D = k.shape
    return (
        jnp.transpose(k, (0, 2, 3, 1)).reshape(B * H, D, T),
        jnp.transpose(v, (0, 2, 1, 3)).reshape(B * H, T, D),
    )


def entries_shapes(batch: int, n_kv_heads: int, capacity: int, head_dim: int):
    """One layer's keys [B Hkv, Dh, S] and values [B Hkv, S, Dh]: the shapes of the two."""
    return (batch * n_kv_heads, head_dim, capacity), (batch * n_kv_heads, capacity, head_dim)


_K_SLOTS, _V_SLOTS = 2, 1  # the slot axis of the keys' layout and of the values'
