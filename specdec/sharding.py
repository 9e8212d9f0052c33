"""A target sharded over devices: a ``data`` x ``model`` mesh and the LLaMA family's sharding rules.

JAX's own sharding does the work (``NamedSharding`` on every array; ``jit`` propagates it through
the compiled loop, GSPMD inserting the collectives). The rules, Megatron-style, for our [in, out]
weight storage:

- attention and MLP, tensor-parallel: the fused qkv and gate/up weights split by output columns
  ``P(None, "model")`` (the qkv bias ``P("model")``; their columns are ordered by kv head and by
  hidden unit, ``models.fused``, so a device's columns are whole kv heads with their queries and
  whole gate/up pairs), o and down by input rows ``P("model", None)``: each device computes its
  heads and its slice of the MLP, and one all-reduce per block sums o's and down's partial
  products;
- vocabulary-parallel embedding and LM head: [D, V] split by vocabulary columns;
- norms replicated;
- the KV cache [B Hkv, ...] (rows and heads merged, ``models.cache``) split by
  rows over ``data`` and replicated over ``model``: each device computes its heads' attention from
  its copy, with no communication (the merged axis cannot be tiled by heads as well); token
  buffers and lengths by rows over ``data``.

Quantized weights (``models.quant``) follow their weight's rule: q, scale and offset all share
the [in, out] axes. A drafter's arrays that are not already on the mesh (a separate draft model,
an EAGLE head) are replicated over it (``place_drafter``); self-speculative drafters hold the
target's sharded arrays themselves.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from specdec import checks

AXES = ("data", "model")
COLUMNS = ("qkv_proj", "gate_up_proj", "embed_tokens", "lm_head")  # output columns split (``models.fused``)
ROWS = ("o_proj", "down_proj")


def make_mesh(data: int = 1, model: int = 1, devices=None) -> Mesh:
    """A ``data`` x ``model`` mesh over the first data * model of ``devices`` (default: all of
    ``jax.devices()``, every process's); ValueError when there are too few."""
    data = checks.integer(data, "mesh data", low=1)
    model = checks.integer(model, "mesh model", low=1)
    devices = list(jax.devices() if devices is None else devices)
    if data * model > len(devices):
        raise ValueError(f"mesh {data} x {model} needs {data * model} devices; {len(devices)} available")
    return Mesh(np.array(devices[: data * model]).reshape(data, model), AXES)


def param_spec(name: str, ndim: int) -> P:
    """The PartitionSpec of a parameter by its Hugging Face-style name (see the module docstring)."""
    parts = name.split(".")
    module = next((p for p in reversed(parts) if p in COLUMNS + ROWS), None)
    if module is None:
        return P()  # norms
    if module in ROWS:
        return P("model", None)
    return P("model") if ndim == 1 else P(None, "model")


def check_divisible(config, mesh: Mesh) -> None:
    """ValueError naming the dimension unless the model splits evenly over the mesh's model axis."""
    n = mesh.shape["model"]
    dims = dict(
        n_heads=config.n_heads,
        n_kv_heads=config.n_kv_heads,
        ffn_dim=config.ffn_dim,
        vocab_size=config.vocab_size,
    )
    for dim, size in dims.items():
        if size % n:
            raise ValueError(f"mesh: {dim} {size} does not split over a model axis of {n} devices")


def fit(spec: P, shape, mesh: Mesh) -> P:
    """``spec`` with every axis that does not split evenly over its mesh axis replicated instead
    (a per-column scale [1, out] of a row-split weight)."""
    axes = [a if a is None or shape[i] % mesh.shape[a] == 0 else None for i, a in enumerate(spec)]
    return P(*axes)


def place(array, mesh: Mesh, spec: P):
    """``array`` on ``mesh`` with ``spec`` (fitted to its shape). A host (numpy) array goes shard by
    shard: each process reads and sends only the slices its own devices hold, so no device ever
    holds a full copy of a sharded weight."""
    sharding = NamedSharding(mesh, fit(spec, array.shape, mesh))
    if isinstance(array, np.ndarray):
        return jax.make_array_from_callback(
            array.shape, sharding, lambda index: array[index], dtype=array.dtype
        )
    return jax.device_put(array, sharding)


def cache_spec() -> P:
    """KV cache arrays [B Hkv, ...] (row-major merge of rows and heads): rows over data."""
    return P("data", None, None)


def place_batch(array, mesh: Mesh):
    """A [B, ...] array with its rows split over ``data``; ValueError unless B divides evenly."""
    rows, n = array.shape[0], mesh.shape["data"]
    if rows % n:
        raise ValueError(f"batch of {rows} rows does not split over the mesh's data axis of {n} devices")
    return place(array, mesh, P("data", *([None] * (array.ndim - 1))))


def place_drafter(drafter, mesh: Mesh):
    """The drafter with every array not already on ``mesh`` replicated over it (the target's own
    sharded arrays, held by self-speculative drafters, stay as they are)."""

    def put(leaf):
        if not isinstance(leaf, jax.Array):
            return leaf
        sharding = leaf.sharding
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            return leaf
        return place(leaf, mesh, P())

    return jax.tree.map(put, drafter)


def shard_bytes(array) -> int:
    """Bytes of ``array`` held by one device (its first addressable shard)."""
    shard = array.addressable_shards[0].data
    return math.prod(shard.shape) * shard.dtype.itemsize


def initialize_distributed(coordinator: str | None = None, num_processes=None, process_id=None) -> None:
    """``jax.distributed.initialize``: with all three given, or none (JAX auto-detects SLURM and
    other cluster environments). Each process then loads only its own devices' shards."""
    given = [x is not None for x in (coordinator, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("distributed: give coordinator, num_processes and process_id together, or none")
    if all(given):
        jax.distributed.initialize(coordinator, num_processes, process_id)
    else:
        jax.distributed.initialize()
