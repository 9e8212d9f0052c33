"""The native attention kernel (``specdec/native/attention.cc``) against XLA's ``attend``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdec.models import Model, native, tiny_config
from specdec.models.transformer import attend, cache_attention


def inputs(rng, B, H, T, G, Dh, S, visible):
    """q [B H, T G, Dh] (scaled), keys [B H, Dh, S], values [B H, S, Dh] and ``visible`` [B, T, S]."""
    q = rng.standard_normal((B * H, T * G, Dh)).astype(np.float32) / np.sqrt(Dh)
    keys = rng.standard_normal((B * H, Dh, S)).astype(np.float32)
    values = rng.standard_normal((B * H, S, Dh)).astype(np.float32)
    return q, keys, values, np.asarray(visible, bool)


def causal(lengths, T, S):
    """Row b's position t sees slots s <= lengths[b] + t (the chain a decode or verify pass scores)."""
    s = np.arange(S)[None, None, :]
    return s <= np.asarray(lengths)[:, None, None] + np.arange(T)[None, :, None]


@pytest.mark.parametrize(
    "B, H, T, G, Dh, S",
    [
        (1, 3, 1, 3, 64, 300),  # SmolLM2's heads, a decode step
        (1, 3, 5, 3, 64, 300),  # a verify pass
        (3, 2, 4, 2, 128, 77),  # Llama's head size; S not a multiple of the 64-slot tile
        (2, 1, 2, 4, 32, 9),
        (2, 2, 3, 1, 24, 130),  # a head size only the generic path takes
        (1, 2, 1, 2, 8, 5000),  # spans of many tiles, merged
    ],
)
def test_the_kernel_equals_xla_attention_over_a_causal_cache(B, H, T, G, Dh, S):
    rng = np.random.default_rng(B * 1000 + S)
    lengths = rng.integers(1, S - T + 1, size=B)
    q, keys, values, visible = inputs(rng, B, H, T, G, Dh, S, causal(lengths, T, S))
    got = np.asarray(jax.jit(native.attention)(q, [(keys, values)], visible))
    want = np.asarray(attend(q, [(keys, values)], visible))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("T", [1, 4])
def test_the_kernel_attends_over_the_cache_and_new_entries_apart(T):
    """Two blocks, as a verify pass that reads the cache without writing it: the cache's slots
    before lengths[b], then the T new entries causally; equal to one block holding both."""
    B, H, G, Dh, S = 2, 3, 3, 64, 200
    rng = np.random.default_rng(T)
    lengths = np.array([150, 37])
    cached = np.arange(S)[None, None, :] < lengths[:, None, None]
    new = np.broadcast_to(np.tril(np.ones((T, T), bool)), (B, T, T))
    visible = np.concatenate([np.broadcast_to(cached, (B, T, S)), new], axis=-1)
    q, keys, values, visible = inputs(rng, B, H, T, G, Dh, S + T, visible)
    blocks = [(keys[..., :S], values[:, :S]), (keys[..., S:], values[:, S:])]
    got = np.asarray(native.attention(q, blocks, visible))
    np.testing.assert_allclose(got, np.asarray(attend(q, blocks, visible)), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(
        got, np.asarray(native.attention(q, [(keys, values)], visible)), rtol=1e-6, atol=1e-7
    )


def test_the_kernel_takes_any_mask_and_slots_past_the_last_one_seen_do_not_reach_the_output():
    """A token tree's mask (slots seen in any pattern), and keys and values past every row's last
    visible slot set to NaN: the output stays XLA's over finite entries (XLA's einsum would make
    NaN of them). Whether those slots are read at all shows in the timings, not here."""
    B, H, T, G, Dh, S = 2, 2, 6, 3, 64, 700
    rng = np.random.default_rng(1)
    visible = rng.random((B, T, S)) < 0.3
    visible[0, :, 400:] = False  # row 0 sees nothing past slot 400, row 1 nothing past 650
    visible[1, :, 650:] = False
    visible[1, 2] = False  # a position that sees no slot: zeros
    q, keys, values, visible = inputs(rng, B, H, T, G, Dh, S, visible)
    want = np.array(attend(q, [(keys, values)], visible)).reshape(B, H, T, G, Dh)
    want[1, :, 2] = 0.0
    for b, end in ((0, 400), (1, 650)):
        keys[b * H : (b + 1) * H, :, end:] = np.nan
        values[b * H : (b + 1) * H, end:] = np.nan
    got = np.asarray(native.attention(q, [(keys, values)], visible)).reshape(B, H, T, G, Dh)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_extreme_scores_keep_the_softmax_exact():
    """Scores hundreds apart (the online softmax's rescaling, e^x underflowing to 0) and equal."""
    B, H, T, G, Dh, S = 1, 1, 2, 2, 8, 260
    rng = np.random.default_rng(2)
    q, keys, values, visible = inputs(rng, B, H, T, G, Dh, S, causal([S - T], T, S))
    keys[:, :, 200] *= 60.0  # one slot dominates, far past the first tile's maximum
    keys[:, :, 7] = 0.0
    q[0, 1] = 0.0  # a query whose scores are all 0: the mean of the values it sees
    got = np.asarray(native.attention(q, [(keys, values)], visible))
    np.testing.assert_allclose(got, np.asarray(attend(q, [(keys, values)], visible)), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got[0, 1], values[0, : S - 1].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_gradients_through_the_kernel_are_xla_attentions():
    rng = np.random.default_rng(3)
    q, keys, values, visible = inputs(rng, 2, 2, 3, 2, 16, 40, causal([20, 30], 3, 40))
    loss = lambda f: lambda *qkv: jnp.sum(jnp.sin(f(*qkv)))
    got = jax.grad(loss(lambda q, k, v: cache_attention(q, ((k, v),), visible)), argnums=(0, 1, 2))(
        q, keys, values
    )
    want = jax.grad(loss(lambda q, k, v: attend(q, [(k, v)], visible)), argnums=(0, 1, 2))(q, keys, values)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_a_model_in_panels_attends_with_the_kernel_and_a_plain_one_does_not():
    plain = Model.random(tiny_config(), seed=0)
    tokens = jnp.ones((1, 2), jnp.int32)
    positions = jnp.arange(2)[None]

    def program(model):
        score = lambda params, cache: model.apply(params, tokens, positions, cache)[0]
        return jax.jit(score).lower(model.params, model.init_cache(1, 16)).as_text()

    assert "specdec_attention" in program(plain.paneled())
    assert "specdec_attention" not in program(plain)
