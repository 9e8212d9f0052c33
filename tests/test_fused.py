"""Fused q/k/v and gate/up weights at the checkpoint boundary (specdec.models.fused)."""

import numpy as np
import pytest

from specdec.models import fused, tiny_config
from specdec.models import quant as q

CFG = tiny_config(n_layers=2, dim=32, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=48, qkv_bias=True)
RNG = np.random.default_rng(0)


def hf_parts():
    """Random Hugging Face-named parts of every layer's fused weights, in HF layout."""
    out = {}
    for layer in range(CFG.n_layers):
        for name, parts in fused.PARTS.items():
            for part, size in zip(parts, fused.part_sizes(name, CFG), strict=True):
                prefix = f"model.layers.{layer}.{part}."
                out[prefix + "weight"] = RNG.normal(size=(size, CFG.dim)).astype(np.float32)
                if name == "self_attn.qkv_proj":
                    out[prefix + "bias"] = RNG.normal(size=(size,)).astype(np.float32)
    return out


def test_fused_outputs_are_ordered_by_kv_head_and_by_hidden_unit():
    parts = hf_parts()
    tensors = fused.fuse(parts, CFG, "test")
    x = RNG.normal(size=(CFG.dim,)).astype(np.float32)
    H, G, Dh = CFG.n_kv_heads, CFG.group_size, CFG.head_dim
    qkv = (tensors["model.layers.1.self_attn.qkv_proj.weight"] @ x).reshape(H, G + 2, Dh)
    p = "model.layers.1.self_attn."
    queries = (parts[p + "q_proj.weight"] @ x).reshape(H * G, Dh)
    np.testing.assert_allclose(qkv[:, :G].reshape(H * G, Dh), queries, rtol=1e-6)  # query head j G + g
    np.testing.assert_allclose(qkv[:, G], (parts[p + "k_proj.weight"] @ x).reshape(H, Dh), rtol=1e-6)
    np.testing.assert_allclose(qkv[:, G + 1], (parts[p + "v_proj.weight"] @ x).reshape(H, Dh), rtol=1e-6)
    bias = tensors[p + "qkv_proj.bias"].reshape(H, G + 2, Dh)
    np.testing.assert_array_equal(bias[:, G], parts[p + "k_proj.bias"].reshape(H, Dh))
    gate_up = (tensors["model.layers.1.mlp.gate_up_proj.weight"] @ x).reshape(CFG.ffn_dim, 2)
    np.testing.assert_allclose(gate_up[:, 0], parts["model.layers.1.mlp.gate_proj.weight"] @ x, rtol=1e-6)
    np.testing.assert_allclose(gate_up[:, 1], parts["model.layers.1.mlp.up_proj.weight"] @ x, rtol=1e-6)
    back = fused.split(tensors, CFG)
    assert back.keys() == parts.keys()
    assert all(np.array_equal(back[name], parts[name]) for name in parts)


def test_quantized_parts_keep_their_values_exactly():
    parts = hf_parts()
    name = "model.layers.0.mlp.gate_up_proj.weight"
    gate, up = "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"
    blocks = {**parts, gate: q.quantize(parts[gate].T, 4, 16), up: q.quantize(parts[up].T, 8, 32)}
    exact = {**parts, gate: blocks[gate].dequantize().T, up: blocks[up].dequantize().T}
    want = fused.fuse(exact, CFG, "test")[name]
    np.testing.assert_array_equal(fused.fuse(blocks, CFG, "test")[name], want)  # float model: dequantized
    got = fused.fuse(blocks, CFG, "test", bits=4)[name]
    # int4 gate widened and up's groups of 32 split to the gate's 16, both exactly
    assert isinstance(got, q.QuantizedTensor) and (got.bits, got.group) == (8, 16)
    np.testing.assert_array_equal(got.dequantize().T, want)
    blocks[up] = parts[up]  # a float part beside a quantized one is quantized to its format
    got = fused.fuse(blocks, CFG, "test", bits=8)[name]
    assert (got.bits, got.group) == (8, 16)
    gate_rows, up_rows = got.dequantize().T.reshape(-1, 2, CFG.dim).transpose(1, 0, 2)
    np.testing.assert_array_equal(gate_rows, blocks[gate].dequantize().T)
    assert 0 < np.abs(up_rows - parts[up]).max() < 0.02 * np.abs(parts[up]).max()
    w = RNG.normal(size=(48, 4)).astype(np.float32)  # groups 16 and 24: no common exact format
    halves = [q.quantize(w, 8, 16), q.quantize(w, 8, 24)]
    with pytest.raises(ValueError, match=r"^here: parts quantized in groups \[16, 24\] cannot be fused$"):
        fused._fused(halves, np.arange(8), 8, "here")


def test_regrouping_is_exact():
    w = RNG.normal(size=(64, 5)).astype(np.float32)
    for bits in (4, 8):
        t = q.quantize(w, bits, 32)
        np.testing.assert_array_equal(t.regrouped(16).dequantize(), t.dequantize())
        assert t.regrouped(16).group == 16


def test_checkpoints_written_before_the_fusion_are_fused():
    parts = hf_parts()
    layer0 = {k: v for k, v in parts.items() if k.startswith("model.layers.0.") and k.endswith("weight")}
    stored = {k.replace("model.layers.0.", "layer."): v.T for k, v in layer0.items()}
    stored["fc.weight"] = RNG.normal(size=(3, 4))
    got = fused.fuse_stored(stored, CFG)
    want = fused.fuse(parts, CFG, "test")
    assert sorted(got) == ["fc.weight", "layer.mlp.gate_up_proj.weight", "layer.self_attn.qkv_proj.weight"]
    np.testing.assert_array_equal(
        got["layer.self_attn.qkv_proj.weight"], want["model.layers.0.self_attn.qkv_proj.weight"].T
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("drop", "ckpt: missing weight tensor 'model.layers.1.self_attn.k_proj.weight'"),
        ("shape", r"ckpt: tensor '\S+k_proj.weight' has shape \(16, 31\), expected \(16, 32\)"),
    ],
)
def test_a_missing_or_misshapen_part_is_named(change, message):
    parts = hf_parts()
    name = "model.layers.1.self_attn.k_proj.weight"
    if change == "drop":
        del parts[name]
    else:
        parts[name] = parts[name][:, :-1]
    with pytest.raises(ValueError, match=f"^{message}$"):
        fused.fuse(parts, CFG, "ckpt")
