"""Fused weights at the checkpoint boundary.

Checkpoints (Hugging Face folders, GGUF files, ``Model.tensors``) hold q_proj, k_proj, v_proj and
gate_proj, up_proj; the model holds ``qkv_proj`` and ``gate_up_proj``, one product each
(``transformer.Attention``, ``transformer.MLP``). A fused weight's outputs are a permutation of
its parts' outputs concatenated ([q | k | v], [gate | up]):

    qkv_proj      [Hkv, G + 2, Dh]   kv head j: its G query heads (j G .. j G + G - 1), its key, its value
    gate_up_proj  [F, 2]             hidden unit f: its gate, then its up

so a split of the outputs over a mesh's model axis keeps each kv head's queries with its key and
value, and each unit's gate with its up. ``fuse`` builds them from Hugging Face-named tensors,
``split`` takes them apart again.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from specdec.models import quant as q

PARTS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


def part_sizes(fused: str, cfg) -> tuple[int, ...]:
    """The output sizes of ``fused``'s parts, in ``PARTS`` order."""
    if fused == "mlp.gate_up_proj":
        return (cfg.ffn_dim, cfg.ffn_dim)
    kv = cfg.n_kv_heads * cfg.head_dim
    return (cfg.n_heads * cfg.head_dim, kv, kv)


def order(fused: str, cfg) -> np.ndarray:
    """[out] int: output j of the fused weight is output ``order[j]`` of its parts concatenated."""
    if fused == "mlp.gate_up_proj":
        F = cfg.ffn_dim
        return np.stack([np.arange(F), F + np.arange(F)], axis=1).reshape(-1)
    H, G, Dh = cfg.n_kv_heads, cfg.group_size, cfg.head_dim
    queries = np.arange(H * G * Dh).reshape(H, G, Dh)
    keys = H * G * Dh + np.arange(H * Dh).reshape(H, 1, Dh)
    return np.concatenate([queries, keys, keys + H * Dh], axis=1).reshape(-1)


def _names(layer: int, fused: str, attr: str) -> tuple[str, list[str]]:
    prefix = f"model.layers.{layer}."
    return prefix + f"{fused}.{attr}", [prefix + f"{part}.{attr}" for part in PARTS[fused]]


def _attrs(fused: str, cfg) -> tuple[str, ...]:
    return ("weight", "bias") if fused == "self_attn.qkv_proj" and cfg.qkv_bias else ("weight",)


def fuse(tensors: Mapping, cfg, source: str, bits: int | None = None) -> dict:
    """Hugging Face-named tensors -> the same with every layer's parts replaced by its fused tensor
    (``model.layers.{i}.self_attn.qkv_proj.weight``, ...). A float part is in Hugging Face layout
    ([out, in]; a bias [out]); a ``QuantizedTensor`` in our [in, out] storage.

    bits: the width the model's linear weights are quantized to (None: float). With it, parts that
    are quantized already keep their values exactly (``_fused``); without, they are dequantized.
    Raises ValueError naming ``source`` and the tensor when a part is missing or misshapen."""
    out = dict(tensors)
    for fused in PARTS:
        columns, sizes = order(fused, cfg), part_sizes(fused, cfg)
        for attr in _attrs(fused, cfg):
            shapes = [(size, cfg.dim) if attr == "weight" else (size,) for size in sizes]
            for layer in range(cfg.n_layers):
                name, parts = _names(layer, fused, attr)
                for part, shape in zip(parts, shapes, strict=True):
                    checked(out, part, shape, source)
                values = [out.pop(part) for part in parts]
                out[name] = _fused(values, columns, bits, f"{source}: {name}")
    return out


def fuse_stored(tensors: Mapping[str, np.ndarray], cfg) -> dict[str, np.ndarray]:
    """Float tensors in our [in, out] storage named by parameter path under any prefix (a training
    checkpoint written before the weights were fused: ``layer.self_attn.q_proj.weight``) -> the
    same with each set of parts replaced by its fused tensor (``layer.self_attn.qkv_proj.weight``)."""
    out = dict(tensors)
    for fused, parts in PARTS.items():
        for attr in _attrs(fused, cfg):
            for name in [n for n in out if n.endswith(f"{parts[0]}.{attr}")]:
                prefix = name[: -len(f"{parts[0]}.{attr}")]
                values = [out.pop(prefix + f"{part}.{attr}").T for part in parts]  # Hugging Face layout
                out[prefix + f"{fused}.{attr}"] = _fused(values, order(fused, cfg), None, name).T
    return out


def checked(tensors: Mapping, name: str, hf_shape: tuple, source: str):
    """tensors[name], checked to have ``hf_shape`` in Hugging Face layout (a ``QuantizedTensor``'s
    shape is in our [in, out] storage); ValueError naming ``source`` and the tensor otherwise."""
    if name not in tensors:
        raise ValueError(f"{source}: missing weight tensor {name!r}")
    value = tensors[name]
    shape = value.shape[::-1] if isinstance(value, q.QuantizedTensor) else np.shape(value)
    if tuple(shape) != tuple(hf_shape):
        raise ValueError(f"{source}: tensor {name!r} has shape {tuple(shape)}, expected {tuple(hf_shape)}")
    return value


def _fused(values: list, columns: np.ndarray, bits: int | None, where: str):
    """Parts -> one tensor whose outputs are ``columns`` of the parts' outputs concatenated.

    Floats (Hugging Face layout) unless ``bits`` is set and a part is quantized. Then the fused
    tensor holds every quantized part's values exactly, as ``Model.from_tensors`` keeps a lone
    quantized tensor: its width is the widest of ``bits`` and the parts' (a narrower part widened
    exactly), its group the parts' smallest (coarser groups split exactly), and float parts are
    quantized to that format. ValueError naming ``where`` when the groups do not divide."""
    quantized = [v for v in values if isinstance(v, q.QuantizedTensor)]
    if bits is None or not quantized:
        floats = [v.dequantize().T if isinstance(v, q.QuantizedTensor) else np.asarray(v) for v in values]
        return np.concatenate(floats, axis=0)[columns]  # Hugging Face layout: outputs are rows
    width, group = max([bits] + [v.bits for v in quantized]), min(v.group for v in quantized)
    if any(v.group % group for v in quantized):
        groups = sorted({v.group for v in quantized})
        raise ValueError(f"{where}: parts quantized in groups {groups} cannot be fused")
    parts = []
    for v in values:
        v = v.regrouped(group) if isinstance(v, q.QuantizedTensor) else q.quantize(v.T, width, group, where)
        parts.append(v.to_int8() if v.bits < width else v)
    stack = lambda arrays: np.concatenate(arrays, axis=-1)[:, columns]
    offset = None
    if any(v.offset is not None for v in parts):  # a symmetric part's offset is 0
        offset = stack([np.zeros_like(v.scale) if v.offset is None else v.offset for v in parts])
    return q.QuantizedTensor(stack([v.q for v in parts]), stack([v.scale for v in parts]), offset, width)


def split(tensors: Mapping[str, np.ndarray], cfg) -> dict[str, np.ndarray]:
    """The inverse of ``fuse`` for float tensors in Hugging Face layout: every fused tensor
    replaced by its parts."""
    out = dict(tensors)
    for fused in PARTS:
        columns, bounds = order(fused, cfg), np.cumsum(part_sizes(fused, cfg))[:-1]
        for attr in _attrs(fused, cfg):
            for layer in range(cfg.n_layers):
                name, parts = _names(layer, fused, attr)
                value = out.pop(name)
                concatenated = np.empty_like(value)
                concatenated[columns] = value
                out.update(zip(parts, np.split(concatenated, bounds, axis=0), strict=True))
    return out
