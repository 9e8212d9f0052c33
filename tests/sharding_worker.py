"""Run by tests/test_sharding.py in a fresh process with 4 forced host devices: every kind of
drafter (bigram and distilled run the code paths of ngram and draft_model, so they are left
out) sampled on one device, and autoregressive greedy there; on the mesh 2x2 (both axes),
greedy and sampled; on 1x4 (every product
split four ways), greedy; on 4x1 (rows split, weights replicated), autoregressive and prompt
lookup (a drafter with per-row state), greedy; shard shapes; a checkpoint loaded straight into
its shards. Each sharded program compiles in seconds: the set is what covers each axis once.
Prints one JSON object."""

import json
import os
import sys

# Compiling the sharded loops is most of this process's time (seconds each, cold); LLVM's
# optimisation level changes how fast the kernels run, not what they compute.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"

import jax

import specdec
from specdec import drafters, sharding
from specdec.models import Model, tiny_config
from specdec.weights.hf import load_hf_dir, save_hf_dir

CFG = tiny_config(vocab_size=64, dim=64, n_layers=3, n_heads=8, n_kv_heads=4, head_dim=8, ffn_dim=128)
PROMPTS = [[3, 7, 1, 5, 3, 7, 2, 9], [4, 4, 4], [1, 2, 3, 4, 5, 6, 1, 2], [6, 5]]
MESHES = {  # mesh: (temperatures, drafters; None: all)
    (1, 4): ((0.0,), None),
    (2, 2): ((0.0, 1.0), None),
    (4, 1): ((0.0,), ("none", "ngram")),
}
TREE = dict(kind="dynamic", n_nodes=6, depth=3, top_k=2)


def drafter_options():
    small = Model.random(tiny_config(**{**vars(CFG), "n_layers": 1}), seed=7)  # a separate draft
    return {
        "none": (None, {}),
        "ngram": ("ngram", {}),
        "layer_skip": ("layer_skip", dict(skip=[1])),
        "layer_skip_tree": (
            "layer_skip",
            dict(skip=[1], tree=dict(kind="dynamic", n_nodes=6, depth=3, top_k=2)),
        ),
        "draft_model": ("draft_model", dict(draft=small, layers=1)),
        "quantized": ("quantized", dict(bits=4)),
        "eagle": ("eagle", dict(checkpoint="untrained")),
    }


def outputs(target, temperatures=(0.0, 1.0), labels=None) -> dict:
    out = {}
    for label, (name, options) in drafter_options().items():
        if labels is not None and label not in labels:
            continue
        drafter = drafters.make(name, target, **options)
        for temperature in temperatures:
            result = specdec.generate(
                target,
                PROMPTS,
                drafter=drafter,
                gamma=3,
                max_new_tokens=10,
                chat=False,
                eos_ids=(),
                temperature=temperature,
                seed=3,
            )
            out[f"{label} T={temperature}"] = result.tokens
    return out


def shard_shapes(model) -> dict:
    p = model.params
    layer = p["layers"][0]
    arrays = {
        "qkv_proj": layer["self_attn"]["qkv_proj"]["weight"][...],
        "o_proj": layer["self_attn"]["o_proj"]["weight"][...],
        "gate_up_proj": layer["mlp"]["gate_up_proj"]["weight"][...],
        "down_proj": layer["mlp"]["down_proj"]["weight"][...],
        "embed_tokens": p["embed_tokens"]["weight"][...],
        "norm": p["norm"]["weight"][...],
    }
    cache = model.init_cache(4, 32)
    arrays["cache_k"] = cache.k[0]
    return {k: [list(a.shape), list(a.addressable_shards[0].data.shape)] for k, a in arrays.items()}


def weight_bytes(model) -> dict:
    leaves = jax.tree.leaves(model.params)
    return dict(
        total=sum(a.nbytes for a in leaves),
        per_device=sum(sharding.shard_bytes(a) for a in leaves),
        replicated=sum(a.nbytes for a in leaves if a.ndim == 1),
    )


def main(folder: str):
    base = Model.random(CFG, seed=0)
    # One device: autoregressive greedy, which every drafter's greedy output on every mesh must
    # equal (lossless), and each drafter sampled, whose draws each mesh must reproduce.
    reference = outputs(base, (0.0,), ["none"]) | outputs(base, (1.0,))
    report = {"devices": len(jax.devices()), "reference": reference, "meshes": {}}
    for shape, (temperatures, labels) in MESHES.items():
        mesh = sharding.make_mesh(*shape)
        model = base.shard(mesh)
        key = "x".join(map(str, shape))
        report["meshes"][key] = dict(
            outputs=outputs(model, temperatures, labels),
            shapes=shard_shapes(model),
            bytes=weight_bytes(model),
        )
    quantized = base.shard(sharding.make_mesh(1, 4)).quantize("int4")  # its new arrays sharded too
    qkv = quantized.params["layers"][0]["self_attn"]["qkv_proj"]["weight"]["q"][...]
    report["quantized_qkv_proj"] = [list(qkv.shape), list(qkv.addressable_shards[0].data.shape)]
    save_hf_dir(base, folder)
    mesh = sharding.make_mesh(1, 4)
    loaded = load_hf_dir(folder, mesh=mesh)
    report["loaded"] = dict(
        shapes=shard_shapes(loaded), outputs=outputs(loaded, (0.0,), ["none"])["none T=0.0"]
    )
    try:
        specdec.generate(loaded.shard(sharding.make_mesh(2, 2)), PROMPTS[:3], max_new_tokens=2, chat=False)
    except ValueError as err:
        report["odd_batch_error"] = str(err)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
