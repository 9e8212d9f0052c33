"""The target sharded over 4 forced host devices (a fresh process: the device count is fixed at
JAX's start): every kind of drafter's output on the mesh 2x2, greedy and sampled, and on 1x4,
greedy (autoregressive and prompt lookup on 4x1), identical to one device's (greedy: to
autoregressive decoding's); each device holding its share of the weights; a checkpoint loaded
into shards."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from specdec import sharding

WORKER = Path(__file__).parent / "sharding_worker.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(folder)],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.slow
def test_every_drafter_is_identical_across_meshes(report):
    assert report["devices"] == 4
    reference = report["reference"]
    assert len(reference) == 8  # autoregressive greedy; 7 drafters sampled
    assert {mesh: len(got["outputs"]) for mesh, got in report["meshes"].items()} == {
        "1x4": 7,
        "2x2": 14,
        "4x1": 2,
    }
    for mesh, got in report["meshes"].items():
        for name, tokens in got["outputs"].items():
            greedy = name.endswith("T=0.0")
            assert tokens == reference["none T=0.0" if greedy else name], f"{mesh}: {name}"


@pytest.mark.slow
def test_each_device_holds_its_share_of_the_weights(report):
    shapes = report["meshes"]["1x4"]["shapes"]
    assert shapes["qkv_proj"] == [[64, 128], [64, 32]]  # output columns split: one kv head each
    assert shapes["gate_up_proj"] == [[64, 256], [64, 64]]
    assert shapes["o_proj"] == [[64, 64], [16, 64]]  # input rows split
    assert shapes["down_proj"] == [[128, 64], [32, 64]]
    assert shapes["embed_tokens"] == [[64, 64], [64, 16]]  # vocabulary split
    assert shapes["norm"] == [[64], [64]]  # replicated
    assert shapes["cache_k"] == [[16, 8, 32], [16, 8, 32]]  # keys [B Hkv, Dh, S], replicated over model
    assert report["meshes"]["2x2"]["shapes"]["cache_k"] == [[16, 8, 32], [8, 8, 32]]  # rows over data
    b = report["meshes"]["1x4"]["bytes"]
    assert b["per_device"] == (b["total"] - b["replicated"]) // 4 + b["replicated"]
    assert report["meshes"]["4x1"]["bytes"]["per_device"] == b["total"]  # data parallel: replicas
    assert report["quantized_qkv_proj"] == [[32, 128], [32, 32]]  # quantizing a sharded model keeps the rule


@pytest.mark.slow
def test_a_checkpoint_loads_straight_into_its_shards(report):
    assert report["loaded"]["shapes"] == report["meshes"]["1x4"]["shapes"]
    assert report["loaded"]["outputs"] == report["reference"]["none T=0.0"]


@pytest.mark.slow
def test_a_batch_that_does_not_split_is_refused_in_one_line(report):
    message = "batch of 3 rows does not split over the mesh's data axis of 2 devices"
    assert report["odd_batch_error"] == message


def test_mesh_errors_and_rules():
    with pytest.raises(ValueError, match=r"^mesh 2 x 4 needs 8 devices; 1 available$"):
        sharding.make_mesh(2, 4)
    P = sharding.P
    assert sharding.param_spec("model.layers.0.self_attn.qkv_proj.weight", 2) == P(None, "model")
    assert sharding.param_spec("model.layers.0.self_attn.qkv_proj.bias", 1) == P("model")
    assert sharding.param_spec("model.layers.0.mlp.gate_up_proj.weight", 2) == P(None, "model")
    assert sharding.param_spec("model.layers.3.mlp.down_proj.weight.scale", 2) == P("model", None)
    assert sharding.param_spec("model.norm.weight", 1) == P()
    with pytest.raises(ValueError, match="give coordinator, num_processes and process_id together"):
        sharding.initialize_distributed("localhost:1234")


DISTRIBUTED_WORKER = Path(__file__).parent / "distributed_worker.py"


@pytest.mark.slow
def test_two_processes_on_localhost_decode_as_one_device_does(report):
    """jax.distributed with 2 CPU processes of 2 devices each (gloo collectives), one 2 x 2 mesh
    over all 4: both processes get the single-device tokens."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, str(DISTRIBUTED_WORKER), str(i), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=DISTRIBUTED_WORKER.parent,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
        got = json.loads(out.splitlines()[-1])
        assert (got["processes"], got["devices"]) == (2, 4)
        assert got["tokens"]["None"] == got["tokens"]["layer_skip"] == report["reference"]["none T=0.0"]
