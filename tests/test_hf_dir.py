"""Hugging Face checkpoint folders: save/load round trips, config round trips, and bad input."""

import json
import re
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import specdec
from specdec.models import SUPPORTED_ARCHITECTURES, Model, ModelConfig, RopeScaling, tiny_config
from specdec.weights import hf, zoo
from specdec.weights.hf import INDEX_FILE, SINGLE_FILE, load_hf_dir, save_hf_dir

CONFIGS = {
    "llama": tiny_config(),
    "llama_tied": tiny_config(tie_embeddings=True),
    "qwen2_bias": tiny_config(architecture="Qwen2ForCausalLM", qkv_bias=True),
    "mistral_window": tiny_config(architecture="MistralForCausalLM", sliding_window=5),
    "llama3_scaling": tiny_config(rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16), rope_theta=500000.0),
}
SHARD_BYTES = 8192  # a tiny float32 model is ~45 KB: several shards


def logits(model: Model, tokens) -> np.ndarray:
    B, T = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    out, _, _ = model.apply(model.params, tokens, positions, model.init_cache(B, T))
    return np.asarray(out)


def tokens_for(config: ModelConfig):
    return jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 12)), jnp.int32)


def safetensors_header(path) -> dict[str, dict]:
    """Tensor name -> {dtype, shape, data_offsets}, read from the file itself (not through our loader)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def with_random_biases(model: Model, seed: int = 1) -> Model:
    """The same model with non-zero q/k/v biases (random init leaves them at zero)."""
    rng = np.random.default_rng(seed)
    tensors = model.tensors()
    for name in tensors:
        if name.endswith(".bias"):
            tensors[name] = rng.normal(size=tensors[name].shape).astype(tensors[name].dtype)
    return Model.from_tensors(model.config, tensors, dtype=model.dtype)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shard", [None, SHARD_BYTES], ids=["single", "sharded"])
@pytest.mark.parametrize("name", ["llama", "qwen2_bias"])
def test_save_load_round_trip_gives_identical_logits(name, shard, dtype, tmp_path):
    config = CONFIGS[name]
    model = Model.random(config, seed=2, dtype=dtype)
    if config.qkv_bias:
        model = with_random_biases(model)
    save_hf_dir(model, tmp_path, max_shard_bytes=shard)

    weight_files = sorted(tmp_path.glob("*.safetensors"))
    if shard is None:
        assert [f.name for f in weight_files] == [SINGLE_FILE]
        assert not (tmp_path / INDEX_FILE).exists()
    else:
        assert not (tmp_path / SINGLE_FILE).exists()
        index = json.loads((tmp_path / INDEX_FILE).read_text())
        assert set(index["weight_map"]) == set(model.tensors())
        assert sorted(set(index["weight_map"].values())) == [f.name for f in weight_files]
        assert len(weight_files) > 2
    expected = "BF16" if dtype == jnp.bfloat16 else "F32"
    for f in weight_files:
        header = safetensors_header(f)
        assert {v["dtype"] for v in header.values()} == {expected}, f.name
        if shard is not None and len(header) > 1:  # only a lone tensor may exceed the limit
            assert sum(end - start for start, end in (v["data_offsets"] for v in header.values())) <= shard
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == np.dtype(dtype).name

    loaded = load_hf_dir(tmp_path, dtype=dtype)
    assert loaded.config == config
    assert loaded.dtype == model.dtype
    assert set(loaded.tensors()) == set(model.tensors())
    for key, value in model.tensors().items():
        np.testing.assert_array_equal(loaded.tensors()[key], value, err_msg=key)
    tokens = tokens_for(config)
    np.testing.assert_array_equal(logits(loaded, tokens), logits(model, tokens))
    # The same folder through the public entry point: the same weights (float32 ones in panels,
    # whose native kernels round differently from XLA's products).
    public = specdec.load_model(str(tmp_path), dtype=dtype)
    np.testing.assert_array_equal(logits(public.unpaneled(), tokens), logits(model, tokens))
    np.testing.assert_allclose(logits(public, tokens), logits(model, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama_tied", "mistral_window", "llama3_scaling"])
def test_round_trip_of_other_architectures(name, tmp_path):
    config = CONFIGS[name]
    model = Model.random(config, seed=4)
    save_hf_dir(model, tmp_path)
    loaded = load_hf_dir(tmp_path)
    assert loaded.config == config
    if config.tie_embeddings:
        assert "lm_head.weight" not in load_file(tmp_path / SINGLE_FILE)
    tokens = tokens_for(config)
    np.testing.assert_array_equal(logits(loaded, tokens), logits(model, tokens))


def test_bf16_folder_loads_as_exact_float32(tmp_path):
    model = Model.random(tiny_config(), seed=6, dtype=jnp.bfloat16)
    save_hf_dir(model, tmp_path)
    loaded = load_hf_dir(tmp_path)  # default dtype float32: an exact upcast
    assert loaded.dtype == jnp.float32
    for key, value in model.tensors().items():
        np.testing.assert_array_equal(loaded.tensors()[key], value.astype(np.float32), err_msg=key)


@pytest.mark.parametrize(
    "first, second", [(SHARD_BYTES, None), (None, SHARD_BYTES), (SHARD_BYTES, SHARD_BYTES)]
)
def test_saving_over_an_existing_folder_loads_the_new_weights(first, second, tmp_path):
    """Re-saving into a folder must not leave an earlier checkpoint that shadows the new one."""
    old, new = Model.random(tiny_config(), seed=10), Model.random(tiny_config(), seed=11)
    save_hf_dir(old, tmp_path, max_shard_bytes=first)
    save_hf_dir(new, tmp_path, max_shard_bytes=second)
    loaded = load_hf_dir(tmp_path)
    tokens = tokens_for(new.config)
    np.testing.assert_array_equal(logits(loaded, tokens), logits(new, tokens))


def test_a_save_that_fails_midway_leaves_the_earlier_one_loadable(tmp_path, monkeypatch):
    """A re-save killed after its first shard: the folder still holds the earlier checkpoint,
    whole; a complete re-save replaces config and weights and keeps the folder's other files."""
    old, new = Model.random(tiny_config(), seed=12), Model.random(tiny_config(), seed=13)
    save_hf_dir(old, tmp_path / "ckpt", max_shard_bytes=SHARD_BYTES)
    (tmp_path / "ckpt" / "README.md").write_text("my notes")
    save_shard = hf._save_tensors

    def first_shard_only(path, tensors):
        if "00002" in path.name:
            raise OSError("killed")
        save_shard(path, tensors)

    monkeypatch.setattr(hf, "_save_tensors", first_shard_only)
    with pytest.raises(OSError, match="killed"):
        save_hf_dir(new, tmp_path / "ckpt", max_shard_bytes=SHARD_BYTES)
    tokens = tokens_for(old.config)
    np.testing.assert_array_equal(logits(load_hf_dir(tmp_path / "ckpt"), tokens), logits(old, tokens))
    monkeypatch.undo()
    save_hf_dir(new, tmp_path / "ckpt")
    np.testing.assert_array_equal(logits(load_hf_dir(tmp_path / "ckpt"), tokens), logits(new, tokens))
    assert (tmp_path / "ckpt" / "README.md").read_text() == "my notes"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_round_trips_through_hf_dict(name):
    config = CONFIGS[name]
    hf = config.to_hf()
    assert hf["architectures"] == [config.architecture]
    assert ModelConfig.from_hf(hf) == config
    assert ModelConfig.from_hf(json.loads(json.dumps(hf))) == config  # as written to config.json


def test_config_fields_reach_the_hf_dict():
    hf = CONFIGS["llama3_scaling"].to_hf()
    assert hf["rope_theta"] == 500000.0
    assert hf["rope_scaling"]["rope_type"] == "llama3"
    assert hf["rope_scaling"]["original_max_position_embeddings"] == 16
    assert CONFIGS["mistral_window"].to_hf()["sliding_window"] == 5
    assert CONFIGS["qwen2_bias"].to_hf()["model_type"] == "qwen2"
    assert CONFIGS["llama_tied"].to_hf()["tie_word_embeddings"] is True


# ---------------------------------------------------------------- bad input


@pytest.fixture
def saved(tmp_path):
    """A valid single-file folder of a tiny llama."""
    save_hf_dir(Model.random(tiny_config(), seed=0), tmp_path)
    return tmp_path


@pytest.fixture
def saved_sharded(tmp_path):
    save_hf_dir(Model.random(tiny_config(), seed=0), tmp_path, max_shard_bytes=SHARD_BYTES)
    return tmp_path


def edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_unsupported_architecture_names_value_and_allowed(saved):
    edit_config(saved, architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as err:
        load_hf_dir(saved)
    message = str(err.value)
    assert "config.json" in message
    assert all(arch in message for arch in SUPPORTED_ARCHITECTURES)


def test_missing_architectures_field_is_unsupported(saved):
    path = saved / "config.json"
    config = json.loads(path.read_text())
    del config["architectures"]
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported architectures") as err:
        load_hf_dir(saved)
    assert all(arch in str(err.value) for arch in SUPPORTED_ARCHITECTURES)


def test_missing_required_config_field_is_named(saved):
    path = saved / "config.json"
    config = json.loads(path.read_text())
    del config["hidden_size"]
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing required field 'hidden_size'"):
        load_hf_dir(saved)


def test_unsupported_rope_scaling_is_named(saved):
    edit_config(saved, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="rope_scaling type 'yarn'"):
        load_hf_dir(saved)


def test_missing_config_json(saved):
    (saved / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("missing config.json")):
        load_hf_dir(saved)
    with pytest.raises(FileNotFoundError, match=re.escape("config.json")):
        specdec.load_model(str(saved))


def test_missing_weight_file(saved):
    (saved / SINGLE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"no {SINGLE_FILE} or {INDEX_FILE}")):
        load_hf_dir(saved)


def test_missing_shard_listed_in_index(saved_sharded):
    shards = sorted(saved_sharded.glob("model-*.safetensors"))
    missing = shards[1]
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(missing.name)) as err:
        load_hf_dir(saved_sharded)
    assert INDEX_FILE in str(err.value)


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_truncated_safetensors_names_the_file(sharded, saved, tmp_path_factory):
    folder = saved
    if sharded:
        folder = tmp_path_factory.mktemp("sharded")
        save_hf_dir(Model.random(tiny_config(), seed=0), folder, max_shard_bytes=SHARD_BYTES)
        victim = sorted(folder.glob("model-*.safetensors"))[-1]
    else:
        victim = folder / SINGLE_FILE
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated") as err:
        load_hf_dir(folder)
    assert str(victim) in str(err.value)


def test_weight_with_wrong_shape_is_named(saved):
    path = saved / SINGLE_FILE
    tensors = load_file(path)
    name = "model.layers.1.self_attn.k_proj.weight"
    tensors[name] = np.zeros((3, 32), np.float32)
    save_file(tensors, path)
    with pytest.raises(ValueError, match=re.escape(name)) as err:
        load_hf_dir(saved)
    assert "(3, 32)" in str(err.value) and "(16, 32)" in str(err.value)


def test_missing_tensor_is_named(saved):
    path = saved / SINGLE_FILE
    tensors = load_file(path)
    name = "model.layers.0.mlp.up_proj.weight"
    del tensors[name]
    save_file(tensors, path)
    with pytest.raises(ValueError, match=re.escape(f"missing weight tensor '{name}'")):
        load_hf_dir(saved)


def test_untied_config_without_lm_head_names_it(saved):
    """A tied checkpoint (no lm_head.weight) whose config claims untied weights."""
    path = saved / SINGLE_FILE
    tensors = load_file(path)
    del tensors["lm_head.weight"]
    save_file(tensors, path)
    with pytest.raises(ValueError, match=re.escape("'lm_head.weight'")):
        load_hf_dir(saved)


def test_unknown_model_name_lists_the_zoo():
    with pytest.raises(ValueError, match="'no-such-model'") as err:
        specdec.load_model("no-such-model")
    assert all(name in str(err.value) for name in zoo.ZOO)
    assert "smollm2-135m-instruct" in str(err.value)
