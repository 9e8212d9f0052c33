"""Weights in panels: the CPU kernel's products, the panel layout, and models stored so."""

import logging
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import specdec
from specdec import drafters, generate, kernels
from specdec.models import Model, native, panels, tiny_config


@pytest.mark.parametrize("K, N", [(64, 48), (37, 16), (96, 160)])
def test_a_product_with_panels_equals_the_product_for_every_row_count(K, N):
    """x [M, K] @ W for M = 1..20 and 37 (one block of up to 8 rows, then blocks of 6 or 8 with a
    remainder; N = 48 splits 3 panels unevenly over the threads), against a float64 product."""
    _assert_every_row_count(K, N)


def _assert_every_row_count(K: int, N: int):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    weight = panels.PanelWeight(w)
    for M in (*range(1, 21), 37):
        x = rng.standard_normal((M, K)).astype(np.float32)
        y = np.asarray(jax.jit(weight.matmul)(x))
        np.testing.assert_allclose(y, x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5 * np.sqrt(K))
    x = rng.standard_normal((2, 3, K)).astype(np.float32)  # leading axes [B, T] kept
    np.testing.assert_allclose(np.asarray(weight.matmul(x)), x @ w, rtol=1e-5, atol=1e-4)


def test_panel_rows_of_two_vectors_give_the_product_too(tmp_path):
    """Compiled for AVX-512, a panel row is one 16-float vector; the AVX2 layout (two 8-float
    vectors, blocks of 6 rows) is built here as a variant without the AVX-512 branch, so that
    both are tested on either kind of machine."""
    source = tmp_path / "panel_matmul.cc"
    source.write_text("#undef __AVX512F__\n" + (native.SOURCES / "panel_matmul.cc").read_text())
    with native.substituted(dict([native.build_variant(source, "two_vectors")])):
        _assert_every_row_count(96, 160)


def test_every_product_on_the_cpu_runs_the_kernel():
    weight = panels.PanelWeight(np.ones((32, 64), np.float32))
    for M in (1, 8, 9, 300):
        assert panels.TARGET in jax.jit(weight.matmul).lower(jnp.ones((M, 32))).as_text()


def test_products_xla_runs_at_once_finish(tmp_path):
    """64 independent products in one program, which XLA runs at once on its intra-op threads:
    none may wait for a pool task that cannot start (a child process, so that a hang fails)."""
    script = tmp_path / "at_once.py"
    script.write_text(
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from specdec.models import panels\n"
        "ws = [panels.PanelWeight(np.full((256, 512), i, np.float32)) for i in range(64)]\n"
        "product = jax.jit(lambda ws, x: sum(w.matmul(x).sum() for w in ws))\n"
        "print(float(product(ws, jnp.ones((4, 256)))))\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == 4 * 256 * 512 * sum(range(64))


def test_gradients_through_the_kernel_equal_the_plain_product():
    """d/dx and d/dW of a loss through x @ W in panels (training a draft that shares the target's
    embedding) against the same loss through x @ W."""
    rng = np.random.default_rng(1)
    w, x = rng.standard_normal((24, 32)).astype(np.float32), rng.standard_normal((10, 24)).astype(np.float32)
    target = rng.standard_normal((10, 32)).astype(np.float32)
    loss = lambda x, y: jnp.sum(jnp.sin(y) * target) + jnp.sum(x**2)
    plain = jax.grad(lambda x, w: loss(x, x @ w), argnums=(0, 1))(x, w)
    in_panels = jax.grad(lambda x, p: loss(x, panels._kernel_product(x, p)), argnums=(0, 1))(
        x, panels.pack(w)
    )
    np.testing.assert_allclose(in_panels[0], plain[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(panels.unpack(np.asarray(in_panels[1])), plain[1], rtol=1e-5, atol=1e-5)


def test_panels_hold_the_weight_and_its_columns():
    w = np.arange(5 * 48, dtype=np.float32).reshape(5, 48)
    packed = panels.pack(w)
    assert packed.shape == (3, 5, 16) and packed[2, 4, 1] == w[4, 33]
    weight = panels.PanelWeight(w)
    assert weight.shape == (5, 48)
    np.testing.assert_array_equal(weight.host(), w)
    index = jnp.asarray([[0, 47], [16, 33]])  # an embedding [D, V] looked up by tokens [B, T]
    np.testing.assert_array_equal(np.asarray(weight.columns(index)), w[:, np.asarray(index)])


def test_a_model_in_panels_scores_and_decodes_as_the_plain_one():
    plain = Model.random(tiny_config(tie_embeddings=True), seed=1)
    paneled = plain.paneled()
    assert paneled.panels and not plain.panels
    assert isinstance(paneled.params["layers"][0]["mlp"]["down_proj"]["weight"]["panels"][...], jax.Array)
    tokens = jax.random.randint(jax.random.key(0), (2, 5), 0, plain.config.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
    for T in (1, 3, 5):  # 2, 6 and 10 rows: one block, then blocks of 6 or 8
        score = lambda m, T=T: m.apply(m.params, tokens[:, :T], positions[:, :T], m.init_cache(2, 16))[0]
        np.testing.assert_allclose(score(paneled), score(plain), rtol=1e-5, atol=1e-5)
    for name, array in paneled.tensors().items():
        np.testing.assert_array_equal(array, plain.tensors()[name], err_msg=name)
    assert not paneled.unpaneled().panels
    prompt, options = [[5, 6, 7, 5, 6, 7, 5, 6]], dict(gamma=3, max_new_tokens=12, chat=False, seed=3)
    for t in (0.0, 1.0):  # greedy, and sampled with one seed: the same tokens
        run = lambda m, t=t: generate(m, prompt, drafters.make("ngram", m), temperature=t, **options)
        assert run(paneled).tokens == run(plain).tokens
    int8 = lambda m: m.quantize("int8", readout=False).tensors()
    for name, array in int8(paneled).items():  # a quantized self-draft of a target in panels
        np.testing.assert_array_equal(array, int8(plain)[name], err_msg=name)


def test_load_model_stores_float32_cpu_models_in_panels_unless_told_not_to(monkeypatch):
    monkeypatch.setenv(panels.ENV, "auto")
    assert specdec.load_model("tiny-random").panels
    assert not specdec.load_model("tiny-random", quant="int8").panels
    assert not specdec.load_model("tiny-random", dtype=jnp.bfloat16).panels
    monkeypatch.setenv(panels.ENV, "off")
    assert not specdec.load_model("tiny-random").panels
    monkeypatch.setenv(panels.ENV, "always")
    with pytest.raises(ValueError, match=r"^SPECDEC_PANELS must be one of auto, off, got 'always'$"):
        specdec.load_model("tiny-random")


def test_a_kernel_that_does_not_build_is_named_and_the_weights_stay_plain(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a compiler that fails
    native.library.cache_clear()
    panels.kernel_available.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=panels.__name__):
            assert not specdec.load_model("tiny-random").panels
    finally:
        native.library.cache_clear()
        panels.kernel_available.cache_clear()
    assert "false failed to build attention.cc, panel_matmul.cc" in caplog.text
    assert not list((tmp_path / "native").glob("*.so"))


def test_a_sharded_model_is_not_stored_in_panels():
    model = Model.random(tiny_config(), seed=0)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    with pytest.raises(ValueError, match="sharded model's weights are not stored in panels"):
        model.shard(mesh).paneled()
    with pytest.raises(ValueError, match="weights in panels are not sharded"):
        model.paneled().shard(mesh)


def _variant(tmp_path, name: str, old: str, new: str):
    """A copy of specdec/native/``name`` with ``old`` replaced by ``new`` (present exactly once)."""
    text = (native.SOURCES / name).read_text()
    assert text.count(old) == 1
    path = tmp_path / name
    path.write_text(text.replace(old, new))
    return path


def test_a_kernel_variant_stands_in_for_its_handler_only_while_substituted(tmp_path):
    """A panel_matmul.cc whose products come out doubled: a jitted function called under
    ``substituted`` calls it (other logits; not the program it compiled before), called before and
    after, the built-in kernel; an attention.cc copied unchanged gives the built-in logits."""
    model = Model.random(tiny_config(), seed=0).paneled()
    tokens, positions = jnp.array([[3, 4, 5]]), jnp.arange(3)[None]
    score = jax.jit(lambda p: model.apply(p, tokens, positions, model.init_cache(1, 8))[0])  # one function
    logits = lambda: np.asarray(score(model.params))
    built_in = logits()
    doubled = _variant(
        tmp_path,
        "panel_matmul.cc",
        "const float s = x[m * K + k];",
        "const float s = 2 * x[m * K + k];",
    )
    handler, target = native.build_variant(doubled, "doubled")
    assert (handler, target) == ("specdec_panel_matmul", "specdec_panel_matmul_doubled")
    with native.substituted({handler: target}):
        assert native.target(handler) == target
        assert not np.allclose(logits(), built_in, rtol=1e-3)
    assert native.target(handler) == handler
    np.testing.assert_array_equal(logits(), built_in)
    same = _variant(
        tmp_path, "attention.cc", "constexpr int64_t kTile = 64;", "constexpr int64_t kTile = 64; "
    )
    with native.substituted(dict([native.build_variant(same, "same")])):
        np.testing.assert_allclose(logits(), built_in, rtol=1e-6, atol=1e-6)


def test_a_variant_that_defines_no_handler_or_has_a_bad_label_is_named(tmp_path):
    other = tmp_path / "other.cc"
    other.write_text("int main() { return 0; }\n")
    with pytest.raises(ValueError, match=r"other\.cc: a variant defines one of the handlers .* \(found 0\)"):
        native.build_variant(other, "x")
    with pytest.raises(ValueError, match=r"needs a label that is an identifier \(got 'a-b'\)"):
        native.build_variant(native.SOURCES / "attention.cc", "a-b")
    with pytest.raises(ValueError, match=r"\['nope'\] are not handlers"), native.substituted({"nope": "x"}):
        pass


def test_the_kernels_sources_key_follows_their_text(tmp_path, monkeypatch):
    """Measured costs are keyed by the kernels' sources (``kernels.software``): a changed line in
    any of them gives another key."""
    built_in = native.sources_key()
    assert built_in in kernels.software()
    for source in (s for s in native.SOURCES.iterdir() if s.is_file()):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    monkeypatch.setattr(native, "SOURCES", tmp_path)
    try:
        native.sources_key.cache_clear()
        assert native.sources_key() == built_in
        native.sources_key.cache_clear()
        (tmp_path / "parallel.h").write_text((tmp_path / "parallel.h").read_text() + "\n// changed\n")
        assert native.sources_key() != built_in
    finally:
        native.sources_key.cache_clear()
