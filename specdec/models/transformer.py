"""A Flax NNX decoder-only transformer for the LLaMA family (LLaMA 2/3, Mistral, Qwen2, SmolLM2).

Every 2-D weight is stored ``[in_features, out_features]`` (the transpose of Hugging
Face checkpoints) and applied as ``x @ W``; the token embedding too is stored [D, V],
so a tied LM head is ``x @ E``. On XLA:CPU (jax 0.10) a matrix-vector product reads
[in, out] weights at about 32 GB/s against 14 GB/s for [out, in] applied as
``x @ W.T``, and T = 2..16 are no slower (README, Performance). ``Model.from_tensors``
and ``Model.tensors`` transpose at the checkpoint boundary.

The forward is the contract of DESIGN.md:
``(tokens[B,T], positions[B,T], cache, mask?) -> (logits[B,T,V], cache, hidden?)``.
Token t of row b is appended at cache slot ``cache.lengths[b] + t`` and rotated
by RoPE at ``positions[b, t]``; for a chain these coincide, for a token tree they
do not (siblings share a position but not a slot), which is why both exist.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from specdec.models import native
from specdec.models.cache import KVCache, cache_layout
from specdec.models.config import ModelConfig
from specdec.models.panels import PanelWeight
from specdec.models.quant import QuantizedWeight

_NEG_INF = -1e30
# The forward program's revision: measured costs and kernel choices are keyed by it
# (``kernels.software``). Bump it with a change that moves the forward's speed.
# 2: values stored [B Hkv, S, Dh] (were [B Hkv, Dh, S]).
# 3: q/k/v and gate/up each one product over weights stored fused (``models.fused``).
# 4: keys stored [B Hkv, Dh, S] (were [B Hkv, S, Dh]).
# 5: models in panels attend with the native kernel (``native.attention``).
# 6: ... in the verify switch's pass too (the cache and the new entries as two blocks).
# 7: timed passes turn every position's logits into greedy probabilities, as a verify pass does
#    (``timing._score_steps``); greedy argmax as two reductions (``sampling.argmax``).
REVISION = 7


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, dtype):
        self.weight = nnx.Param(jnp.ones((dim,), dtype))
        self.eps = eps

    def __call__(self, x):  # [..., D]
        return rms_norm(x, self.weight[...], self.eps)


def rms_norm(x, weight, eps: float):
    """x / rms(x) * weight over the last axis, computed in f32, returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (x32 * weight.astype(jnp.float32)).astype(x.dtype)


def dense(weight, dtype):
    """A weight as a float array in ``dtype``: an ``nnx.Param`` as it is, a ``QuantizedWeight``
    dequantized (inside the compiled program; the stored arrays stay quantized)."""
    return weight(dtype) if isinstance(weight, QuantizedWeight) else weight[...]


def matmul(x, weight):
    """x [..., in] @ a weight stored [in, out]: an ``nnx.Param``, a ``QuantizedWeight`` or a
    ``PanelWeight`` (``models.panels``: its own kernel) -> [..., out] in x's dtype."""
    return weight.matmul(x) if isinstance(weight, PanelWeight) else x @ dense(weight, x.dtype)


class Embedding(nnx.Module):
    """Token embedding stored [D, V]: looked up by column, and used as is by a tied output head.
    ``weight`` is an ``nnx.Param``, a ``QuantizedWeight`` (a quantized model) or a ``PanelWeight``."""

    def __init__(self, vocab_size: int, dim: int, *, dtype, rngs: nnx.Rngs):
        self.weight = nnx.Param(
            jax.random.normal(rngs.params(), (dim, vocab_size), jnp.float32).astype(dtype)
        )

    def __call__(self, tokens, dtype):  # [B, T] -> [B, T, D]
        if isinstance(self.weight, QuantizedWeight):  # dequantize only the looked-up columns
            return jnp.moveaxis(self.weight.columns(tokens, dtype), 0, -1)
        if isinstance(self.weight, PanelWeight):
            return jnp.moveaxis(self.weight.columns(tokens), 0, -1)
        return embed_lookup(self.weight[...], tokens)


def embed_lookup(weight, tokens):
    """Columns of an embedding stored [D, V] for tokens [B, T] -> [B, T, D]."""
    return jnp.moveaxis(jnp.take(weight, tokens, axis=1), 0, -1)


class Linear(nnx.Module):
    """y = x @ W (+ b), W stored [in, out]: an ``nnx.Param``, a ``QuantizedWeight`` or a ``PanelWeight``."""

    def __init__(self, d_in: int, d_out: int, *, bias: bool, dtype, rngs: nnx.Rngs):
        scale = 1.0 / math.sqrt(d_in)
        self.weight = nnx.Param(
            jax.random.normal(rngs.params(), (d_in, d_out), jnp.float32).astype(dtype) * scale
        )
        self.bias = nnx.Param(jnp.zeros((d_out,), dtype)) if bias else None

    def __call__(self, x):
        y = matmul(x, self.weight)
        return y if self.bias is None else y + self.bias[...]


def rope_frequencies(cfg: ModelConfig) -> np.ndarray:
    """Inverse frequencies [Dh/2], with LLaMA-3 scaling when configured (host-side constant)."""
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float64) / cfg.head_dim))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq.astype(np.float32)
    # LLaMA 3.1: keep high frequencies, divide low ones by `factor`, interpolate between.
    wavelen = 2 * math.pi / inv_freq
    low_wavelen = s.original_max_position / s.low_freq_factor
    high_wavelen = s.original_max_position / s.high_freq_factor
    smooth = (s.original_max_position / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
    scaled = np.where(mid, (1 - smooth) * inv_freq / s.factor + smooth * inv_freq, scaled)
    return scaled.astype(np.float32)


def rope_angles(positions, inv_freq):
    """cos and sin [B, T, 1, Dh/2] of the rotation angles positions[b, t] * inv_freq (once per forward)."""
    angles = positions[:, :, None, None].astype(jnp.float32) * inv_freq  # [B, T, 1, Dh/2]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, rope):
    """Rotate x [B, T, H, Dh] by the angles ``rope = (cos, sin)`` (HF "rotate_half" layout)."""
    cos, sin = rope
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attention_inputs(cfg: ModelConfig, cache: KVCache, positions, mask=None, cached_mask=None, write=True):
    """What every layer's attention needs for T new tokens appended after ``cache.lengths``: which
    entries each new token sees, and the RoPE angles of ``positions`` [B, T].

    New token t of row b sees the row's cached slots s < lengths[b] (only those ``cached_mask``
    [B, T, S] allows, if given: a drafter growing a token tree in its cache) and, among the new
    tokens, those before it (or what ``mask`` [B, T, T] allows). ``write``: visible [B, T, S] over
    the cache's slots once the new tokens are written at lengths[b] + u; else [B, T, S + T] over
    the cache as it is, then the new tokens.
    """
    B, T = positions.shape
    s = jnp.arange(cache.capacity)[None, None, :]
    lengths = cache.lengths[:, None, None]
    t = jnp.arange(T)[None, :, None]
    new = jnp.arange(T)[None, None, :]
    u = s - lengths  # [B, 1, S]: slot s holds new token u (when 0 <= u < T)
    see_cached = jnp.broadcast_to(u < 0, (B, T, cache.capacity))  # [B, T, S]
    see_new = jnp.broadcast_to(new <= t, (B, T, T)) if mask is None else mask  # [B, T, T]
    if cached_mask is not None:
        see_cached &= cached_mask
    if cfg.sliding_window is not None:  # slot distance within the window (slots = positions in a chain)
        see_cached &= u > t - cfg.sliding_window
        see_new &= new > t - cfg.sliding_window
    if write:  # new token u's column moved to its slot lengths[b] + u
        placed = jnp.take_along_axis(
            see_new, jnp.broadcast_to(jnp.clip(u, 0, T - 1), see_cached.shape), axis=2
        )
        visible = see_cached | ((u >= 0) & (u < T) & placed)
    else:
        visible = jnp.concatenate([see_cached, see_new], axis=-1)
    return visible, rope_angles(positions, jnp.asarray(rope_frequencies(cfg)))


def attend(q, blocks, visible):
    """Grouped-query attention by XLA's products. q [B Hkv, T G, Dh] (row b's kv head h is entry
    b Hkv + h; query j of position t is t G + j; scaled by 1 / sqrt(Dh)); blocks: (keys
    [B Hkv, Dh, S_i], values [B Hkv, S_i, Dh]) pairs whose slots follow one another; visible
    [B, T, sum S_i] -> [B Hkv, T G, Dh] in the values' dtype."""
    B, T, _ = visible.shape
    n, r, _ = q.shape
    scores = jnp.concatenate([jnp.einsum("nqd,nds->nqs", q, keys) for keys, _ in blocks], axis=-1)
    scores = scores.astype(jnp.float32).reshape(B, n // B, T, r // T, -1)
    scores = jnp.where(visible[:, None, :, None], scores, _NEG_INF)  # [B, Hkv, T, G, slots]
    weights = jax.nn.softmax(scores, axis=-1).astype(blocks[0][1].dtype).reshape(n, r, -1)
    out, start = 0.0, 0
    for _, values in blocks:  # each block's values weighted by its slots
        width = values.shape[1]
        out = out + jnp.einsum("nqs,nsd->nqd", weights[..., start : start + width], values)
        start += width
    return out


@jax.custom_vjp
def cache_attention(q, blocks, visible):
    """``attend`` by the native kernel (``native.attention``: float32, slots after the last one a
    row sees not read); its gradient is ``attend``'s (training through a model in panels)."""
    return native.attention(q, blocks, visible)


def _cache_attention_forward(q, blocks, visible):
    return cache_attention(q, blocks, visible), (q, blocks, visible)


def _cache_attention_backward(saved, dy):
    q, blocks, visible = saved
    _, vjp = jax.vjp(lambda q, blocks: attend(q, blocks, visible), q, blocks)
    return (*vjp(dy), None)


cache_attention.defvjp(_cache_attention_forward, _cache_attention_backward)


class Attention(nnx.Module):
    """Grouped-query attention. ``qkv_proj`` is q, k and v in one product: its output columns are
    [Hkv, G + 2, Dh], kv head j's G query heads, then its key, then its value (``models.fused``),
    so a split of the columns over devices keeps each kv head's queries with it."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        self.qkv_proj = Linear(cfg.dim, q_dim + 2 * kv_dim, bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.o_proj = Linear(q_dim, cfg.dim, bias=False, dtype=dtype, rngs=rngs)
        self.cfg = cfg

    @property
    def native(self) -> bool:
        """Whether this layer attends with the native kernel: with its weights in panels (a
        float32 CPU model, ``models.panels``) and heads the kernel takes."""
        return isinstance(self.qkv_proj.weight, PanelWeight) and native.attends(self.cfg.head_dim)

    def __call__(self, x, cache: KVCache, cache_layer: int, visible, rope, write: bool = True):
        """x [B, T, D]; visible [B, T, S] bool (``write``) or [B, T, S + T]; rope (cos, sin)
        -> (out [B, T, D], cache with this layer's new keys and values written; without ``write``,
        the cache as it is and the new keys [B Hkv, Dh, T] and values [B Hkv, T, Dh] apart)."""
        cfg = self.cfg
        B, T, _ = x.shape
        H, G = cfg.n_kv_heads, cfg.group_size
        qkv = self.qkv_proj(x).reshape(B, T, H, G + 2, cfg.head_dim)
        q = qkv[..., :G, :].reshape(B, T, cfg.n_heads, cfg.head_dim)  # query head j G + g
        k, v = qkv[..., G, :], qkv[..., G + 1, :]  # [B, T, Hkv, Dh]
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        new = cache_layout(k, v)
        if write:
            # Write first, then attend over the whole cache: the old buffer is dead once
            # written, so XLA updates it in place (read before the write, it is copied).
            cache = cache.put(cache_layer, *new)
            blocks = [(cache.k[cache_layer], cache.v[cache_layer])]
        else:  # the cache read only; the caller appends the new entries (KVCache.append)
            blocks = [(cache.k[cache_layer], cache.v[cache_layer]), new]
        # Grouped-query attention: G = n_heads / n_kv_heads query heads share one kv head; the
        # T G queries of each (row, kv head) form one [T G, Dh] block against its [Dh, S] keys.
        q = q.reshape(B, T, H, G, cfg.head_dim).transpose(0, 2, 1, 3, 4).reshape(B * H, T * G, cfg.head_dim)
        q = q / math.sqrt(cfg.head_dim)
        if self.native:
            out = cache_attention(q, tuple(blocks), visible).astype(x.dtype)
        else:
            out = attend(q, blocks, visible)
        out = out.reshape(B, H, T, G, cfg.head_dim).transpose(0, 2, 1, 3, 4)
        out = out.reshape(B, T, cfg.n_heads * cfg.head_dim)
        return self.o_proj(out), (cache if write else new)


class MLP(nnx.Module):
    """SwiGLU. ``gate_up_proj`` is gate and up in one product: output columns [F, 2], each hidden
    unit's gate then its up (``models.fused``), so a split of the columns keeps the pairs."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.gate_up_proj = Linear(cfg.dim, 2 * cfg.ffn_dim, bias=False, dtype=dtype, rngs=rngs)
        self.down_proj = Linear(cfg.ffn_dim, cfg.dim, bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        gate_up = self.gate_up_proj(x).reshape(*x.shape[:-1], -1, 2)  # [..., F, 2]
        return self.down_proj(jax.nn.silu(gate_up[..., 0]) * gate_up[..., 1])


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps, dtype)
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps, dtype)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, cache, cache_layer, visible, rope, write=True):
        h, cache = self.self_attn(self.input_layernorm(x), cache, cache_layer, visible, rope, write)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class Transformer(nnx.Module):
    """Decoder-only LLaMA-family transformer. Parameter names follow HF (``model.layers.3.mlp.down_proj``),
    except the fused ``self_attn.qkv_proj`` and ``mlp.gate_up_proj`` (``models.fused``)."""

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.dim, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([Block(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.n_layers)])
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, dtype)
        self.lm_head = (
            None
            if cfg.tie_embeddings
            else Linear(cfg.dim, cfg.vocab_size, bias=False, dtype=dtype, rngs=rngs)
        )

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        cache: KVCache,
        *,
        mask: jax.Array | None = None,
        cached_mask: jax.Array | None = None,
        layers: tuple[int, ...] | None = None,
        hidden_layers: tuple[int, ...] = (),
        layer_mask: jax.Array | None = None,
        write: bool = True,
    ):
        """Score T new tokens per row and append their keys/values to the cache.

        tokens, positions: [B, T] int32.
        cache: KVCache with one cached layer per layer run (``len(layers)``).
        mask: optional [B, T, T] bool among the new tokens (True = may attend); default causal.
            Every new token sees the row's earlier ``cache.lengths[b]`` slots, or those of them
            that ``cached_mask`` [B, T, S] allows.
        layers: static tuple of layer indices to run (first k, or a skip set), default all.
            The lm head and final norm always run; no weights are copied.
        hidden_layers: static layer indices whose output residual stream to return, in this order
            (a layer may repeat).
        layer_mask: optional traced [n_layers] bool; a False layer passes the residual stream
            through unchanged. The traced twin of ``layers`` for searching skip sets without
            recompiling (every layer is still computed, so it saves no time).
        write: static; False reads the cache only and returns, in its place, a cache of capacity T
            holding the new tokens' entries (lengths: where they go), for ``KVCache.append``: a
            pass inside ``lax.switch`` that carries no cache through its branches (which XLA
            would copy).

        Returns logits [B, T, V] float32, the cache (lengths advanced by T; see ``write``), and
        hidden [len(hidden_layers), B, T, D] (None when hidden_layers is empty).
        """
        cfg = self.cfg
        layers = tuple(range(cfg.n_layers)) if layers is None else tuple(layers)
        T = tokens.shape[1]
        visible, rope = attention_inputs(cfg, cache, positions, mask, cached_mask, write)
        x = self.embed_tokens(tokens, self.norm.weight.dtype)  # [B, T, D]
        hidden, new = {}, []
        for cache_layer, i in enumerate(layers):
            out, written = self.layers[i](x, cache, cache_layer, visible, rope, write)
            cache = written if write else cache
            new.append(written)
            x = out if layer_mask is None else jnp.where(layer_mask[i], out, x)
            if i in hidden_layers:
                hidden[i] = x
        x = self.norm(x)
        head = (self.embed_tokens if self.lm_head is None else self.lm_head).weight  # [D, V]
        logits = matmul(x, head).astype(jnp.float32)  # [B, T, V] (XLA:CPU has no bf16 x bf16 -> f32 matmul)
        cache = cache.with_lengths(cache.lengths + T) if write else KVCache.block(new, cache.lengths)
        return logits, cache, (jnp.stack([hidden[i] for i in hidden_layers]) if hidden_layers else None)
