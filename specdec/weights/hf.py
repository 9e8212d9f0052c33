"""Hugging Face checkpoint folders: config.json + (sharded) safetensors + tokenizer.json."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from specdec.files import replace_folder, write_atomic, write_text_atomic
from specdec.models import Model, ModelConfig
from specdec.weights.files import one_line, read_json

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_config(folder: Path) -> ModelConfig:
    """The folder's config.json; FileNotFoundError or ValueError (corrupt, missing or mistyped field)
    naming the file."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing config.json in the checkpoint folder")
    return ModelConfig.from_hf(read_json(path), source=str(path))


def _weight_files(folder: Path) -> list[Path]:
    if (folder / INDEX_FILE).is_file():
        weight_map = read_json(folder / INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{folder / INDEX_FILE}: 'weight_map' must map tensor names to file names")
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif (folder / SINGLE_FILE).is_file():
        files = [folder / SINGLE_FILE]
    else:
        raise FileNotFoundError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE} in the checkpoint folder")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: weight shard listed in {INDEX_FILE} is missing")
    return files


def read_tensors(folder: Path) -> dict[str, np.ndarray]:
    """All tensors of the folder's safetensors file(s) as numpy arrays (bf16 kept via ml_dtypes)."""
    tensors = {}
    for f in _weight_files(folder):
        try:
            with safe_open(f, framework="flax") as fh:
                for key in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
                    tensors[key] = np.asarray(fh.get_tensor(key))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{f}: unreadable or truncated safetensors file ({one_line(err)})") from None
    return tensors


def load_hf_dir(
    folder, *, dtype=jnp.float32, quant: str | None = None, group: int | None = None, mesh=None
) -> Model:
    """Load a LLaMA / Mistral / Qwen2 checkpoint folder (with its tokenizer when present)."""
    from specdec.weights.tokenizer import Tokenizer

    folder = Path(folder)
    config = read_config(folder)
    tokenizer = Tokenizer.from_hf_dir(folder) if (folder / "tokenizer.json").is_file() else None
    return Model.from_tensors(
        config,
        read_tensors(folder),
        dtype=dtype,
        tokenizer=tokenizer,
        name=folder.name,
        source=str(folder),
        quant=quant,
        group=group,
        mesh=mesh,
    )


def _save_tensors(path: Path, tensors: dict) -> None:
    """``tensors`` as the safetensors file ``path`` (``format: pt``, as transformers writes)."""
    write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def save_hf_dir(model: Model, folder, *, max_shard_bytes: int | None = None) -> Path:
    """Write ``model`` as an HF checkpoint folder; shards with an index when ``max_shard_bytes`` is
    set. The folder is replaced whole (``files.replace_folder``): an earlier save there stays
    loadable until the new one is complete, and files other than a checkpoint's config and weights
    (a README, generation_config.json, the tokenizer of a model saved without one) are kept."""
    write = lambda staging: _write_hf_dir(model, staging, max_shard_bytes)
    return replace_folder(folder, write, _not_weights)


def _not_weights(name: str) -> bool:
    """Whether an existing folder's entry ``name`` outlives a new save: all but config and weights
    (weights of an earlier save must not shadow the new ones)."""
    shard = fnmatch.fnmatch(name, "model-*-of-*.safetensors")
    return name not in ("config.json", SINGLE_FILE, INDEX_FILE) and not shard


def _write_hf_dir(model: Model, folder: Path, max_shard_bytes: int | None) -> None:
    config = model.config.to_hf()
    config["torch_dtype"] = str(np.dtype(model.dtype))
    write_text_atomic(folder / "config.json", json.dumps(config, indent=2))
    tensors = {k: np.ascontiguousarray(v) for k, v in model.tensors().items()}
    if max_shard_bytes is None:
        _save_tensors(folder / SINGLE_FILE, tensors)
    else:
        shards: list[dict[str, np.ndarray]] = [{}]
        for name, array in tensors.items():
            if shards[-1] and sum(a.nbytes for a in shards[-1].values()) + array.nbytes > max_shard_bytes:
                shards.append({})
            shards[-1][name] = array
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _save_tensors(folder / fname, shard)
            weight_map.update(dict.fromkeys(shard, fname))
        total = sum(a.nbytes for a in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        write_text_atomic(folder / INDEX_FILE, json.dumps(index))
    if model.tokenizer is not None:
        model.tokenizer.save_hf(folder)
