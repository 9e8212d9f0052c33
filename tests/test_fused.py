"""Fused q/k/v and gate/up weights at the checkpoint boundary (specdec.models.fused)."""

import numpy as np
import pytest

from specdec.models import fused, tiny_config
from specdec.models import quant as q

CFG = tiny_config(n_layers=2, dim=32, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=48, qkv_bias=True)
RNG = np.random.default_rng(0)


def hf_parts(layers=(0, 1)):
    """Random Hugging Face-named parts of every layer's fused weights, in HF layout."""
    out = {}
    for layer in layers:
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


def test_quantized_parts_fuse_as_they_are_or_dequantized():
    parts = hf_parts()
    want = fused.fuse(parts, CFG, "test")
    name = "model.layers.0.mlp.gate_up_proj.weight"
    gate, up = "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"
    blocks = dict(parts)
    blocks[gate], blocks[up] = q.quantize(parts[gate].T, 4, 16), q.quantize(parts[up].T, 8, 16)
    got = fused.fuse(blocks, CFG, "test")[name]
    assert isinstance(got, q.QuantizedTensor) and got.bits == 8 and got.group == 16  # int4 widened exactly
    exact = fused.fuse({**parts, gate: blocks[gate].dequantize().T, up: blocks[up].dequantize().T}, CFG, "t")
    np.testing.assert_array_equal(got.dequantize().T, exact[name])
    assert np.abs(got.dequantize().T - want[name]).max() < 0.5  # quantized, close to the float weights
    blocks[up] = q.quantize(parts[up].T, 8)  # another group size: both dequantized, fused as floats
    mixed = fused.fuse(blocks, CFG, "test")[name]
    assert isinstance(mixed, np.ndarray)
    np.testing.assert_array_equal(mixed.reshape(-1, 2, CFG.dim)[:, 1], blocks[up].dequantize().T)


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
