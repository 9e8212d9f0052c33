"""The Flax transformer: cache consistency, padding, masks, layer subsets, dtypes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from specdec import drafters, timing
from specdec.decode import LoopConfig, decode_loop, prefill
from specdec.models import Model, RopeScaling, tiny_config
from specdec.sampling import Sampling


def full_logits(model, tokens):
    """Logits of one uncached forward over the whole sequence [1, T]."""
    T = tokens.shape[1]
    logits, _, _ = model.apply(model.params, tokens, jnp.arange(T)[None], model.init_cache(1, 64))
    return logits


@pytest.mark.parametrize(
    "config",
    [
        tiny_config(),
        tiny_config(qkv_bias=True, architecture="Qwen2ForCausalLM", tie_embeddings=True),
        tiny_config(sliding_window=5, architecture="MistralForCausalLM"),
        tiny_config(rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16), rope_theta=500000.0),
    ],
    ids=["llama", "qwen2", "mistral_window", "llama3_scaling"],
)
def test_incremental_decode_equals_full_forward(config):
    model = Model.random(config, seed=3)
    tokens = jax.random.randint(jax.random.key(0), (1, 20), 0, config.vocab_size)
    expected = full_logits(model, tokens)
    # Prefill 7 tokens, then chunks of 1, 3, 1, 4, 1, 3 tokens.
    cache = model.init_cache(1, 64)
    pieces, start = [], 0
    for size in (7, 1, 3, 1, 4, 1, 3):
        chunk = tokens[:, start : start + size]
        logits, cache, _ = model.apply(model.params, chunk, jnp.arange(start, start + size)[None], cache)
        pieces.append(logits)
        start += size
    assert int(cache.lengths[0]) == 20
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_rows", [3, 18], ids=["per-row-updates", "scatter"])
def test_rows_of_different_lengths_match_each_row_alone(n_rows):
    """Rows of unequal lengths in one batch, then one more token each at its own slot: every row
    equals that row alone (18 rows take the cache's scatter write, 3 its per-row updates)."""
    config = tiny_config()
    model = Model.random(config, seed=1)
    rows = [[5, 9, 3, 7, 1, 2, 8], [4, 4], [11, 12, 13, 14]]
    rows = [[(t + 7 * i) % config.vocab_size for t in rows[i % 3]] for i in range(n_rows)]
    T = max(len(r) for r in rows)
    batch = np.zeros((n_rows, T), np.int32)
    for b, r in enumerate(rows):
        batch[b, : len(r)] = r
    positions = jnp.broadcast_to(jnp.arange(T), (n_rows, T))
    logits, cache, _ = model.apply(model.params, jnp.asarray(batch), positions, model.init_cache(n_rows, 32))
    # Roll back the padding, then decode one more token per row at its own position.
    lengths = jnp.array([len(r) for r in rows])
    nxt = jnp.arange(1, n_rows + 1)[:, None]
    step, _, _ = model.apply(model.params, nxt, lengths[:, None], cache.with_lengths(lengths))
    for b, r in enumerate(rows):
        alone = full_logits(model, jnp.asarray([[*r, int(nxt[b, 0])]]))
        np.testing.assert_allclose(logits[b, : len(r)], alone[0, : len(r)], atol=1e-5)
        np.testing.assert_allclose(step[b, 0], alone[0, -1], atol=1e-5)


def cache_copies(compiled, cache) -> int:
    """Copies of a cache-sized array among the thunks of a compiled program."""
    shapes = {f"{jnp.dtype(a.dtype).name}[{','.join(map(str, a.shape))}]" for a in (*cache.k, *cache.v)}
    names = {"f32": "float32", "bf16": "bfloat16"}
    return sum(
        op == "copy" and re.sub(r"^(\w+)\[", lambda m: names.get(m[1], m[1]) + "[", shape) in shapes
        for op, shape in timing.thunks(compiled)
    )


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("drafter", ["none", "ngram"])
@pytest.mark.parametrize("paneled", [False, True], ids=["plain", "panels"])
def test_decode_loop_updates_the_cache_in_place(batch, drafter, paneled):
    """The compiled decode loop writes the KV cache in place: no copy of a cache buffer per step,
    autoregressive or verifying prompt lookup's drafts at one of two widths (reading a layer's
    cache before writing it, a [B, Hkv, ...] layout, or a cache carried through the verify
    switch's branches made XLA copy every layer's buffers at every step). In panels, the native
    attention kernel reads the written cache: no copy either."""
    model = Model.random(tiny_config(), seed=0)
    model = model.paneled() if paneled else model
    cache = model.init_cache(batch, 64)
    draft = None if drafter == "none" else drafters.make(drafter, model)
    tokens, lengths = jnp.zeros((batch, 64), jnp.int32), jnp.full((batch,), 4)
    args = (model.params, draft, tokens, lengths, cache, jax.random.key(0))
    gamma, widths = (0, ()) if draft is None else (3, (1,))
    cfg = LoopConfig(sampling=Sampling(), gamma=gamma, max_new_tokens=8, eos_ids=(), verify_widths=widths)
    assert len(cfg.widths) == (1 if draft is None else 2)
    state = prefill(model.graphdef, *args[:-1], cfg=cfg, prompt_len=16)
    compiled = decode_loop.lower(
        model.graphdef, model.params, draft, state, lengths, args[-1], cfg=cfg
    ).compile()
    assert cache_copies(compiled, cache) == 0


def test_the_prefill_caches_the_prompts_without_the_head():
    """The prefill, a program of its own so that a run times it apart, caches the prompt block as
    ``model.apply`` does and computes no [B, T, V] logits (XLA drops the unused head): the
    prefill_s taken out of a wall is the prefill alone."""
    model = Model.random(tiny_config(vocab_size=97), seed=0)
    tokens = jax.random.randint(jax.random.key(1), (2, 64), 0, 97)
    lengths = jnp.array([24, 20])
    cfg = LoopConfig(sampling=Sampling(), gamma=0, max_new_tokens=8, eos_ids=())
    args = (model.params, None, tokens, lengths, model.init_cache(2, 64))
    compiled = prefill.lower(model.graphdef, *args, cfg=cfg, prompt_len=24).compile()
    shapes = [shape for _, shape in timing.thunks(compiled)]
    assert shapes and not any(",97]" in shape for shape in shapes)  # no [B, T, V] result
    positions = jnp.broadcast_to(jnp.arange(24), (2, 24))
    _, want, _ = model.apply(model.params, tokens[:, :24], positions, model.init_cache(2, 64))
    state = prefill(model.graphdef, *args, cfg=cfg, prompt_len=24)  # tokens and cache donated
    np.testing.assert_allclose(np.asarray(state.cache.k[0]), np.asarray(want.k[0]), atol=1e-6)
    assert np.asarray(state.lengths).tolist() == [24, 20] and int(state.step) == 0


@pytest.mark.parametrize("drafter", ["none", "draft_model", "eagle"])
def test_a_chunked_prefill_reads_what_one_pass_reads(drafter):
    """The prefill in chunks of 8 positions (a scan of 3 passes over a 24-token block) caches the
    same keys and values in every layer as one pass, and hands the drafter the same prompt: a draft
    model's own cache and EAGLE's cache and feature h (which reads the target's hidden states)."""
    model = Model.random(tiny_config(vocab_size=97), seed=0)
    options = {"draft_model": dict(layers=1), "eagle": dict(checkpoint="untrained")}
    draft = None if drafter == "none" else drafters.make(drafter, model, **options[drafter])
    cfg = LoopConfig(sampling=Sampling(), gamma=0 if draft is None else 2, max_new_tokens=8, eos_ids=())
    tokens = jax.random.randint(jax.random.key(1), (2, 64), 0, 97)
    lengths = jnp.array([24, 19])

    def read(chunk):
        args = (model.params, draft, jnp.array(tokens), lengths, model.init_cache(2, 64))
        return prefill(model.graphdef, *args, cfg=cfg, prompt_len=24, chunk=chunk)

    one, chunked = read(None), read(8)
    assert np.asarray(chunked.cache.lengths).tolist() == [24, 24]
    for want, got in zip(jax.tree.leaves(one), jax.tree.leaves(chunked), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
    with pytest.raises(ValueError, match="chunk 7 does not divide the prompt block 24"):
        read(7)


def test_a_chunked_prefill_holds_a_chunk_of_attention_scores():
    """XLA's own memory analysis of the prefill: at 4 rows x 256 positions over 512 slots, one pass
    holds [B H, 256, 512] scores (8 MiB here); chunks of 32 positions hold at most a quarter of
    its temporaries (an eighth of the scores, beside what both hold)."""
    model = Model.random(tiny_config(), seed=0)
    tokens, lengths = jnp.zeros((4, 512), jnp.int32), jnp.full((4,), 256)
    cfg = LoopConfig(sampling=Sampling(), gamma=0, max_new_tokens=8, eos_ids=())

    def temp_bytes(chunk):
        args = (model.params, None, tokens, lengths, model.init_cache(4, 512))
        compiled = prefill.lower(model.graphdef, *args, cfg=cfg, prompt_len=256, chunk=chunk).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    scores = 4 * model.config.n_heads * 256 * 512 * 4
    whole, chunked = temp_bytes(None), temp_bytes(32)
    assert whole >= scores and chunked <= whole / 4


def test_tree_mask_equals_separate_chains():
    """Two sibling branches scored in one pass with a tree mask = each chain scored alone."""
    model = Model.random(tiny_config(), seed=2)
    prefix = jnp.array([[3, 1, 4, 1, 5]])
    a, b = [9, 2], [6, 5]
    _, cache, _ = model.apply(model.params, prefix, jnp.arange(5)[None], model.init_cache(1, 32))
    # New tokens [a0, a1, b0, b1] at positions [5, 6, 5, 6]; a branch sees only itself.
    mask = jnp.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], bool)[None]
    tree, _, _ = model.apply(model.params, jnp.array([a + b]), jnp.array([[5, 6, 5, 6]]), cache, mask=mask)
    for branch, got in ((a, tree[0, :2]), (b, tree[0, 2:])):
        alone = full_logits(model, jnp.concatenate([prefix, jnp.array([branch])], axis=1))
        np.testing.assert_allclose(got, alone[0, 5:], atol=1e-5)


def test_layer_subset_equals_a_truncated_model():
    config = tiny_config(n_layers=4)
    model = Model.random(config, seed=4)
    tokens = jnp.array([[1, 2, 3, 4, 5, 6]])
    pos = jnp.arange(6)[None]
    # A model built from layers 0 and 2 of the original, by copying their weights.
    small_cfg = tiny_config(n_layers=2)
    tensors = model.tensors()
    renamed = {k: v for k, v in tensors.items() if ".layers." not in k}
    for new, old in ((0, 0), (1, 2)):
        prefix = f"model.layers.{old}."
        for k, v in tensors.items():
            if k.startswith(prefix):
                renamed[f"model.layers.{new}." + k[len(prefix) :]] = v
    small = Model.from_tensors(small_cfg, renamed)
    got, cache, _ = model.apply(model.params, tokens, pos, model.init_cache(1, 16, n_layers=2), layers=(0, 2))
    want, _, _ = small.apply(small.params, tokens, pos, small.init_cache(1, 16))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert cache.n_layers == 2


def test_hidden_states_of_chosen_layers():
    model = Model.random(tiny_config(n_layers=3), seed=5)
    tokens, pos = jnp.array([[1, 2, 3]]), jnp.arange(3)[None]
    _, _, hidden = model.apply(model.params, tokens, pos, model.init_cache(1, 8), hidden_layers=(0, 2))
    _, _, first = model.apply(
        model.params, tokens, pos, model.init_cache(1, 8, n_layers=1), layers=(0,), hidden_layers=(0,)
    )
    assert hidden.shape == (2, 1, 3, 32)
    np.testing.assert_allclose(hidden[0], first[0], atol=1e-6)
    assert not np.allclose(hidden[0], hidden[1])


def test_bfloat16_model_tracks_float32():
    config = tiny_config()
    f32 = Model.random(config, seed=6)
    bf16 = Model.from_tensors(config, f32.tensors(), dtype=jnp.bfloat16)
    assert bf16.dtype == jnp.bfloat16 and bf16.init_cache(1, 8).k[0].dtype == jnp.bfloat16
    tokens = jnp.array([[1, 5, 9, 13, 17]])
    a, b = full_logits(f32, tokens), full_logits(bf16, tokens)
    assert b.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(a - b))) < 0.1 * float(jnp.max(jnp.abs(a)))
    assert (jnp.argmax(a, -1) == jnp.argmax(b, -1)).mean() >= 0.8


def test_unsupported_architecture_is_rejected():
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel.*allowed: LlamaForCausalLM"):
        from specdec.models import ModelConfig

        ModelConfig.from_hf({"architectures": ["GPT2LMHeadModel"]})
