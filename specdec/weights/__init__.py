"""Checkpoint and tokenizer loading: the model zoo (GGUF), HF safetensors folders, GGUF files."""

from __future__ import annotations

import functools
from pathlib import Path

import jax.numpy as jnp

_TINY = dict(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=128, max_position=8192)
# Tiny random-weight models, for fast experiments and tests: name -> (where the tokenizer comes
# from: a zoo model's, or None for the tokenizer built locally by ``tiny.tiny_tokenizer``,
# tiny_config overrides). "tiny-random" needs no network and no cache; "smollm2-tiny-random" has
# SmolLM2's real 49152-token vocabulary (its GGUF is downloaded once).
RANDOM_MODELS = {
    "tiny-random": (None, _TINY),
    "smollm2-tiny-random": ("smollm2-135m-instruct", _TINY),
}


def load_model(
    name_or_path: str, *, dtype=jnp.float32, quant: str | None = None, group: int | None = None, mesh=None
):
    """Load a model by zoo name (``smollm2-135m-instruct``), HF checkpoint folder or ``.gguf`` file,
    or a tiny random model (``tiny-random``: its own 512-token tokenizer, nothing downloaded;
    ``smollm2-tiny-random``: SmolLM2's tokenizer).

    quant: None, "int8" or "int4": weight-only quantization at load (``specdec.models.quant``):
    the linear layers at that width, the embedding and LM head int8; a GGUF file's Q4_1 and Q8_0
    blocks are taken as they are. ``group``: rows per scale for the weights quantized here.
    mesh: a ``specdec.sharding.make_mesh`` mesh: each weight goes from the host straight into its
    shards (tensor-parallel over ``model``), batches split over ``data``.

    On the CPU a float32 model that is neither quantized nor sharded comes with its weights in
    panels (``Model.paneled``; ``SPECDEC_PANELS=off`` keeps them [in, out]).

    Returns a ``specdec.Model`` carrying config, parameters (in ``dtype``) and tokenizer.
    """
    from specdec.models import panels

    model = _load(name_or_path, dtype=dtype, quant=quant, group=group, mesh=mesh)
    return model.paneled() if panels.wanted(dtype, quant=quant, mesh=mesh) else model


def _load(name_or_path: str, *, dtype, quant, group, mesh):
    """``load_model`` before the weights go into panels."""
    from specdec.models import Model, tiny_config
    from specdec.models.quant import check_quant
    from specdec.weights import zoo
    from specdec.weights.hf import load_hf_dir

    check_quant(quant)
    if name_or_path in RANDOM_MODELS:
        base, overrides = RANDOM_MODELS[name_or_path]
        if base is None:
            from specdec.weights.tiny import tiny_tokenizer

            tokenizer = tiny_tokenizer()
        else:
            tokenizer = zoo.load_zoo_tokenizer(base)
        config = tiny_config(vocab_size=tokenizer.vocab_size, **overrides)
        model = Model.random(config, seed=0, dtype=dtype, tokenizer=tokenizer, name=name_or_path)
        model = model.quantize(quant, group)
        return model if mesh is None else model.shard(mesh)
    from specdec.weights.gguf_file import read_gguf

    build = functools.partial(Model.from_tensors, dtype=dtype, quant=quant, group=group, mesh=mesh)
    if name_or_path in zoo.ZOO:
        if quant is None:  # the dequantized tensors are cached; quantized ones read straight from the GGUF
            config, tensors = zoo.load_zoo_tensors(name_or_path)
        else:
            config, tensors = read_gguf(zoo.fetch_gguf(name_or_path), keep_quantized=True)
        return build(config, tensors, tokenizer=zoo.load_zoo_tokenizer(name_or_path), name=name_or_path)
    path = Path(name_or_path)
    if path.is_dir():
        return load_hf_dir(path, dtype=dtype, quant=quant, group=group, mesh=mesh)
    if path.suffix == ".gguf" and path.is_file():
        from specdec.weights.tokenizer import Tokenizer

        config, tensors = read_gguf(path, keep_quantized=quant is not None)
        return build(config, tensors, tokenizer=Tokenizer.from_gguf(path), name=path.stem, source=str(path))
    raise ValueError(
        f"model {name_or_path!r} is neither a zoo name ({', '.join([*zoo.ZOO, *RANDOM_MODELS])}), "
        "a Hugging Face checkpoint folder nor a .gguf file"
    )


__all__ = ["load_model"]
