"""Read LLaMA-architecture GGUF files (llama.cpp format) into Hugging Face layout.

``read_gguf`` returns a :class:`~specdec.models.config.ModelConfig` plus float32
numpy arrays named and shaped exactly as in a Hugging Face ``LlamaForCausalLM``
``state_dict`` (linear weights are ``[out_features, in_features]``).

Two llama.cpp conventions are undone here:

* GGUF stores dimensions innermost-first (``ne[0]`` is the row length), i.e.
  reversed with respect to numpy; ``gguf.GGUFReader`` already exposes tensor
  data in numpy order, and the dequantized array is reshaped to the reversed
  GGUF shape, which is the HF ``[out, in]`` shape.
* ``convert_hf_to_gguf.py`` permutes the rows of ``q_proj``/``k_proj`` (weights
  and biases) so that each head's rotary pairs are interleaved (llama.cpp uses
  the GPT-J rotary layout, HF the NeoX "rotate half" layout).
  :func:`unpermute_qk` is the exact inverse of that permutation.
"""

from __future__ import annotations

import os
import re
import struct

import numpy as np

from specdec.models.config import ModelConfig
from specdec.models.quant import QuantizedTensor
from specdec.weights.files import one_line

SUPPORTED_GGUF_ARCHITECTURES = ("llama",)

# GGUF tensor name (after ``blk.{i}.``) -> Hugging Face name (after ``model.layers.{i}.``)
_LAYER_TENSORS = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (HF layout -> GGUF layout), rows of a q/k weight or bias."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Exact inverse of :func:`permute_qk` (GGUF layout -> HF layout).

    Within each head, GGUF row ``2*j + k`` holds HF row ``k*half + j``
    (``half = head_dim // 2``); this undoes it. Use ``n_heads`` for q and
    ``n_kv_heads`` for k.
    """
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot un-permute {rows} rows into {n_head} heads of even size")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def open_gguf(path: str | os.PathLike):
    """A ``gguf.GGUFReader`` over ``path``.

    FileNotFoundError names a missing file; a truncated or corrupt file (on which the reader
    raises bare ValueError / IndexError / struct errors) raises one ValueError naming it.
    """
    import gguf

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, EOFError, struct.error) as err:
        raise ValueError(f"{path}: truncated or corrupt GGUF file ({one_line(err)})") from None
    except OSError as err:
        raise ValueError(f"{path}: unreadable ({one_line(err.strerror or err)})") from None


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def _f32(value) -> float:
    """A float32 metadata value as the shortest decimal that round-trips (1e-05, not 9.9999997e-06)."""
    return float(str(np.float32(value)))


def _dequantize(tensor) -> np.ndarray:
    import gguf

    shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF ne[] is innermost-first
    data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    # copy: F32 data is a view of the reader's memmap, which must not outlive the reader
    return np.array(data, dtype=np.float32, copy=True).reshape(shape)


# Block layouts (llama.cpp ggml-common.h), 32 weights of one row per block:
#   Q8_0: f16 d, int8 qs[32]                 w[j] = d * qs[j]
#   Q4_1: f16 d, f16 m, uint8 qs[16]         w[j] = d * (qs[j] & 15) + m, w[j + 16] = d * (qs[j] >> 4) + m
QUANTIZED_GGUF_TYPES = ("Q8_0", "Q4_1")


def _blocks(tensor, permute_heads: int | None = None) -> QuantizedTensor:
    """A Q8_0 or Q4_1 tensor's blocks as they are, as a QuantizedTensor in our [in, out] storage
    (q/k rows un-permuted over ``permute_heads`` heads); no float copy of the weight is made."""
    rows, row_bytes = tensor.data.shape
    block = 34 if tensor.tensor_type.name == "Q8_0" else 20
    raw = np.asarray(tensor.data).reshape(rows, row_bytes // block, block)
    d = raw[..., 0:2].copy().view(np.float16)[..., 0]  # [rows, blocks]
    if tensor.tensor_type.name == "Q8_0":
        q, m, bits = raw[..., 2:].copy().view(np.int8).reshape(rows, -1), None, 8
    else:
        q, bits = raw[..., 4:].reshape(rows, -1).copy(), 4
        m = raw[..., 2:4].copy().view(np.float16)[..., 0]
    parts = [q, d] if m is None else [q, d, m]
    if permute_heads is not None:
        parts = [unpermute_qk(a, permute_heads) for a in parts]
    parts = [np.ascontiguousarray(a.T) for a in parts]  # HF [out, in] rows -> our [in, out]
    return QuantizedTensor(parts[0], parts[1], parts[2] if m is not None else None, bits)


def _read(tensor, blocks: bool, heads: int | None = None):
    """A tensor's quantized blocks (``blocks``: a QuantizedTensor in our [in, out] storage) or its
    float32 array in HF layout, q/k rows un-permuted over ``heads`` heads either way."""
    if blocks:
        return _blocks(tensor, heads)
    w = _dequantize(tensor)
    return w if heads is None else unpermute_qk(w, heads)


def read_gguf(
    path: str | os.PathLike, *, keep_quantized: bool = False
) -> tuple[ModelConfig, dict[str, np.ndarray | QuantizedTensor]]:
    """Read a LLaMA-architecture GGUF file.

    Returns ``(config, tensors)`` where ``tensors`` maps Hugging Face parameter
    names (``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.q_proj.weight``,
    ..., ``model.norm.weight`` and ``lm_head.weight`` only when the file has an
    untied ``output.weight``) to float32 arrays in HF shapes. With ``keep_quantized``,
    Q8_0 and Q4_1 tensors come as ``QuantizedTensor`` in our [in, out] storage instead
    (``Model.from_tensors(..., quant=...)`` takes them without a float copy).

    Raises ValueError naming the file for a truncated or corrupt file, an unsupported
    ``general.architecture``, missing metadata, unsupported RoPE scaling or unexpected tensors.
    """
    path = os.fspath(path)
    reader = open_gguf(path)
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ValueError(
            f"{path}: general.architecture is {arch!r}; allowed: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}"
        )

    def need(key: str):
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise ValueError(f"{path}: missing required GGUF metadata field {f'{arch}.{key}'!r}")
        return value

    scaling = _field(reader, f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(f"{path}: {arch}.rope.scaling.type {scaling!r} is not supported; allowed: none")
    names = [t.name for t in reader.tensors]
    if "rope_freqs.weight" in names:
        raise ValueError(f"{path}: rope_freqs.weight (LLaMA-3.1 RoPE scaling) is not supported in GGUF files")

    dim = int(need("embedding_length"))
    n_heads = int(need("attention.head_count"))
    n_kv_heads = int(_field(reader, f"{arch}.attention.head_count_kv", n_heads))
    head_dim = _field(reader, f"{arch}.attention.key_length")
    if head_dim is None:
        head_dim = _field(reader, f"{arch}.rope.dimension_count", dim // n_heads)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab_size = _field(reader, f"{arch}.vocab_size")
    if vocab_size is None and tokens is not None:
        vocab_size = len(tokens.data)

    by_name = {t.name: t for t in reader.tensors}
    embed = by_name.get("token_embd.weight")
    if embed is None:
        raise ValueError(f"{path}: missing tensor 'token_embd.weight'")
    embed_rows = int(embed.shape[-1])
    if vocab_size is None:
        vocab_size = embed_rows
    if int(vocab_size) != embed_rows:
        raise ValueError(
            f"{path}: vocab size {vocab_size} disagrees with token_embd.weight rows {embed_rows}"
        )

    config = ModelConfig(
        vocab_size=int(vocab_size),
        dim=dim,
        n_layers=int(need("block_count")),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=int(head_dim),
        ffn_dim=int(need("feed_forward_length")),
        norm_eps=_f32(need("attention.layer_norm_rms_epsilon")),
        rope_theta=_f32(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        max_position=int(_field(reader, f"{arch}.context_length", 2048)),
        tie_embeddings="output.weight" not in by_name,
        qkv_bias="blk.0.attn_q.bias" in by_name,
        architecture="LlamaForCausalLM",
    )

    tensors: dict[str, np.ndarray] = {}
    unknown = []
    for tensor in reader.tensors:
        name = tensor.name
        blocks = keep_quantized and tensor.tensor_type.name in QUANTIZED_GGUF_TYPES
        if name in _GLOBAL_TENSORS:
            tensors[_GLOBAL_TENSORS[name]] = _read(tensor, blocks)
            continue
        m = _LAYER_RE.fullmatch(name)
        if m is None or m.group(2) not in _LAYER_TENSORS or int(m.group(1)) >= config.n_layers:
            unknown.append(name)
            continue
        heads = None
        if m.group(2).startswith("attn_q."):
            heads = config.n_heads
        elif m.group(2).startswith("attn_k."):
            heads = config.n_kv_heads
        tensors[f"model.layers.{m.group(1)}.{_LAYER_TENSORS[m.group(2)]}"] = _read(tensor, blocks, heads)
    if unknown:
        raise ValueError(f"{path}: unexpected tensors for a {arch} model: {', '.join(unknown[:8])}")
    _check_shapes(path, config, tensors)
    return config, tensors


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF parameter name -> shape for a LLaMA ``config``."""
    d, hd, f = config.dim, config.head_dim, config.ffn_dim
    q, kv = config.n_heads * hd, config.n_kv_heads * hd
    out = {"model.embed_tokens.weight": (config.vocab_size, d), "model.norm.weight": (d,)}
    if not config.tie_embeddings:
        out["lm_head.weight"] = (config.vocab_size, d)
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        out[p + "self_attn.q_proj.weight"] = (q, d)
        out[p + "self_attn.k_proj.weight"] = (kv, d)
        out[p + "self_attn.v_proj.weight"] = (kv, d)
        out[p + "self_attn.o_proj.weight"] = (d, q)
        if config.qkv_bias:
            out[p + "self_attn.q_proj.bias"] = (q,)
            out[p + "self_attn.k_proj.bias"] = (kv,)
            out[p + "self_attn.v_proj.bias"] = (kv,)
        out[p + "mlp.gate_proj.weight"] = (f, d)
        out[p + "mlp.up_proj.weight"] = (f, d)
        out[p + "mlp.down_proj.weight"] = (d, f)
        out[p + "input_layernorm.weight"] = (d,)
        out[p + "post_attention_layernorm.weight"] = (d,)
    return out


def _check_shapes(path: str, config: ModelConfig, tensors: dict[str, np.ndarray]) -> None:
    want = expected_shapes(config)
    missing = sorted(set(want) - set(tensors))
    if missing:
        raise ValueError(f"{path}: missing tensors {', '.join(missing[:8])}")
    for name, shape in want.items():
        t = tensors[name]
        got = t.shape[::-1] if isinstance(t, QuantizedTensor) else t.shape  # ours [in, out] -> HF
        if got != shape:
            raise ValueError(f"{path}: {name} has shape {got}, expected {shape}")
