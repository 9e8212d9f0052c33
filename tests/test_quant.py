"""Weight-only quantization: the int8/int4 formats against numpy references, GGUF blocks loaded
as they are, memory, the compiled program's arguments, and quantized models and self-drafts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_gguf import CFG, Q, random_hf_tensors, write_llama_gguf

import specdec
from specdec import drafters
from specdec.models import Model, forward, tiny_config
from specdec.models.quant import QuantizedTensor, QuantizedWeight, dequantize, pack_int4, quantize
from specdec.weights import load_model
from specdec.weights.gguf_file import read_gguf

RNG = np.random.default_rng(0)


def reference_dequantize(t) -> np.ndarray:
    """The format written out element by element (module docstring of specdec.models.quant)."""
    rows, cols = t.rows, t.q.shape[1]
    group = t.group
    w = np.zeros((rows, cols), np.float64)
    for i in range(rows):
        g, j = divmod(i, group)
        if t.bits == 8:
            value = t.q[i].astype(np.float64)
        else:  # byte g * group/2 + (j mod group/2): low nibble for j < group/2, high nibble after
            byte = t.q[g * group // 2 + j % (group // 2)].astype(np.int64)
            value = (byte & 15) if j < group // 2 else (byte >> 4)
        offset = 0 if t.offset is None else t.offset[g].astype(np.float64)
        w[i] = t.scale[g].astype(np.float64) * value + offset
    return w


@pytest.mark.parametrize("bits,group", [(8, None), (8, 32), (4, 32), (4, 64)])
def test_quantized_matmul_matches_numpy_reference(bits, group):
    w = RNG.standard_normal((128, 48)).astype(np.float32)
    t = quantize(w, bits, group)
    assert t.q.dtype == (np.int8 if bits == 8 else np.uint8)
    assert t.q.shape == ((128, 48) if bits == 8 else (64, 48))
    assert t.group == (128 if group is None else group)
    ref = reference_dequantize(t)
    # the quantization error is at most half a step per weight
    step = np.repeat(t.scale.astype(np.float64), t.group, axis=0)
    assert (np.abs(ref - w) <= 0.5 * step + 1e-3 * np.abs(w).max()).all()
    x = RNG.standard_normal((2, 3, 128)).astype(np.float32)
    weight = QuantizedWeight(t)
    y = jax.jit(lambda x: x @ weight(jnp.float32))(x)  # dequantized inside the compiled program
    np.testing.assert_allclose(np.asarray(y), x @ ref, rtol=1e-4, atol=1e-4)
    # embedding-style lookup of columns
    cols = jnp.asarray([[5, 0], [47, 5]])
    got = weight.columns(cols, jnp.float32)  # [rows, 2, 2]
    np.testing.assert_allclose(np.asarray(got), ref[:, np.asarray(cols)], rtol=1e-6, atol=1e-6)


def test_int4_packing_order_is_pinned():
    """Within a group of 4 rows: byte j holds row j (low nibble) and row j + 2 (high nibble)."""
    q = np.array([[1], [2], [3], [4], [5], [6], [7], [8]], np.uint8)
    np.testing.assert_array_equal(pack_int4(q, 4)[:, 0], [1 | 3 << 4, 2 | 4 << 4, 5 | 7 << 4, 6 | 8 << 4])
    deq = dequantize(pack_int4(q, 4), np.ones((2, 1), np.float16), None, 4, np.float32)
    np.testing.assert_array_equal(deq[:, 0], np.arange(1, 9))


@pytest.mark.parametrize(
    "bits,group,message",
    [(4, 24, "group 24 must be even and divide the 128 input rows"), (8, 0, "group must be an integer >= 1")],
)
def test_bad_group_is_refused_with_the_weight_named(bits, group, message):
    with pytest.raises(ValueError, match=f"^w.up: {message}"):
        quantize(np.zeros((128, 4), np.float32), bits, group, where="w.up")


def test_bad_quant_mode_is_refused():
    with pytest.raises(ValueError, match=r"^quant must be null, int8 or int4, got 'int3'$"):
        load_model("tiny-random", quant="int3")
    with pytest.raises(ValueError, match=r"^quantized: bits must be 8 or 4, got 3$"):
        drafters.make("quantized", Model.random(tiny_config()), bits=3)
    with pytest.raises(ValueError, match=r"^eagle: the target is quantized \(int8\); trained heads read"):
        drafters.make("eagle", Model.random(tiny_config()).quantize("int8"), checkpoint="untrained")


@pytest.fixture(scope="module")
def tiny():
    return Model.random(tiny_config(dim=64, ffn_dim=128, n_layers=2, vocab_size=96), seed=1)


def _logits(model, tokens):
    tokens = jnp.asarray(tokens)
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    logits, _, _ = model.apply(model.params, tokens, positions, model.init_cache(tokens.shape[0], 16))
    return np.asarray(logits)


def _nbytes(tree) -> int:
    return sum(a.nbytes for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("quant,bits", [("int8", 8), ("int4", 4)])
def test_quantized_model_memory_and_output(tiny, quant, bits):
    qm = tiny.quantize(quant)
    assert qm.quant == quant
    # the blocks' linear weights take about bits/32 of their f32 bytes (plus float16 scales, offsets)
    ratio = _nbytes(qm.params["layers"]) / _nbytes(tiny.params["layers"])
    assert bits / 32 <= ratio < bits / 32 + (0.02 if bits == 8 else 0.04), ratio
    gate_up = qm.params["layers"][0]["mlp"]["gate_up_proj"]["weight"]
    assert gate_up["q"][...].dtype == (jnp.int8 if bits == 8 else jnp.uint8)
    # the readout (tied embedding) is int8 in both modes; norms stay float and are shared
    assert qm.params["embed_tokens"]["weight"]["q"][...].dtype == jnp.int8
    assert qm.params["norm"]["weight"][...] is tiny.params["norm"]["weight"][...]
    # the forward equals the float model with the dequantized weights
    tokens = RNG.integers(0, 96, (2, 7))
    deq = Model.from_tensors(tiny.config, qm.tensors())
    np.testing.assert_allclose(_logits(qm, tokens), _logits(deq, tokens), rtol=2e-4, atol=2e-4)
    # and stays close to the float model's
    ref = _logits(tiny, tokens)
    err = np.abs(_logits(qm, tokens) - ref).max() / np.abs(ref).max()
    assert err < (0.03 if bits == 8 else 0.3), err


def test_compiled_forward_reads_the_quantized_arrays(tiny):
    """The compiled forward's arguments are the int8/uint8 weights and their float16 scales: no
    float copy of a weight is made at load, so what a step reads is the quantized bytes."""
    qm = tiny.quantize("int4")
    tokens = jnp.zeros((1, 1), jnp.int32)
    cache = qm.init_cache(1, 8)
    lowered = jax.jit(forward, static_argnums=0).lower(qm.graphdef, qm.params, tokens, tokens, cache)
    args = [a for a in jax.tree.leaves(lowered.in_avals) if len(a.shape) == 2]  # weights, scales, tokens
    kinds = {a.dtype for a in args}
    assert kinds == {jnp.dtype(jnp.uint8), jnp.dtype(jnp.int8), jnp.dtype(jnp.float16), jnp.dtype(jnp.int32)}
    weight_bytes = sum(np.prod(a.shape) * a.dtype.itemsize for a in args if a.dtype != jnp.int32)
    assert weight_bytes < 0.3 * _nbytes(tiny.params)


def test_gguf_q4_1_and_q8_0_blocks_load_as_they_are(tmp_path):
    cfg = dataclasses.replace(CFG, tie_embeddings=False)
    hf = random_hf_tensors(cfg, seed=3)
    qtypes = {name: Q.Q4_1 for name in hf if "layers" in name and name.endswith("proj.weight")}
    qtypes["model.embed_tokens.weight"] = Q.Q8_0
    qtypes["lm_head.weight"] = Q.Q8_0
    qtypes["model.layers.1.mlp.up_proj.weight"] = Q.Q8_0  # an int8 block in an int4 model (fused with Q4_1)
    write_llama_gguf(tmp_path / "q.gguf", cfg, hf, qtypes)
    dense = Model.from_tensors(*read_gguf(tmp_path / "q.gguf"))
    _, blocks = read_gguf(tmp_path / "q.gguf", keep_quantized=True)
    assert isinstance(blocks["model.layers.0.mlp.down_proj.weight"], QuantizedTensor)
    tokens = RNG.integers(0, cfg.vocab_size, (2, 6))
    for quant in ("int4", "int8"):
        qm = Model.from_tensors(cfg, blocks, quant=quant)
        qkv = qm.params["layers"][0]["self_attn"]["qkv_proj"]["weight"]
        assert qkv["q"][...].dtype == (jnp.uint8 if quant == "int4" else jnp.int8)
        outputs = (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
        assert qkv["scale"][...].shape == (cfg.dim // 32, outputs)  # q, k and v: blocks of 32
        gate_up = qm.params["layers"][1]["mlp"]["gate_up_proj"]["weight"]["q"][...]
        assert gate_up.dtype == jnp.int8  # a Q8_0 block is never re-quantized to fewer bits: its
        # Q4_1 partner is widened to int8 exactly
        head = qm.params["lm_head"]["weight"]
        assert head["q"][...].dtype == jnp.int8 and "offset" not in head  # Q8_0 is symmetric
        # the blocks represent the file's values exactly: the same logits as the dequantized load
        np.testing.assert_allclose(_logits(qm, tokens), _logits(dense, tokens), rtol=1e-5, atol=1e-5)


def test_quantized_self_draft_shares_the_target_readout(tiny):
    drafter = drafters.make("quantized", tiny, bits=4)
    embed = drafter.params["embed_tokens"]["weight"][...]
    assert embed is tiny.params["embed_tokens"]["weight"][...]  # shared, not copied
    assert drafter.params["layers"][1]["self_attn"]["o_proj"]["weight"]["q"][...].dtype == jnp.uint8
    assert drafter.layers == (0, 1)


def test_quantized_target_decodes_with_every_drafter_losslessly(tiny):
    """A quantized target is a target like any other: speculative output equals its own greedy output."""
    target = tiny.quantize("int8")
    prompts = [[3, 7, 1, 5, 3, 7, 2, 9], [4, 4, 4, 4]]
    kw = dict(max_new_tokens=12, chat=False, eos_ids=())
    auto = specdec.generate(target, prompts, **kw)
    for name, options in [("quantized", dict(bits=4)), ("ngram", {})]:
        drafter = drafters.make(name, target, **options)
        spec = specdec.generate(target, prompts, drafter=drafter, gamma=3, **kw)
        assert spec.tokens == auto.tokens, name
