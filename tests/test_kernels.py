"""specdec.kernels: the verify kernels per program, chosen per machine and model by measurement."""

import json
import platform

import jax
import pytest

from specdec import kernels, timing
from specdec.models import Model, tiny_config, transformer


@pytest.fixture
def kernel_file(tmp_path, monkeypatch):
    """An empty specdec cache; SPECDEC_VERIFY_KERNELS=auto."""
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path))
    monkeypatch.setenv(kernels.ENV, "auto")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    return tmp_path / kernels.CACHE_FILE


def planted(seconds, calls):
    def builds_s(model, T, **_):
        calls.append((model.config.dim, T))
        return dict(seconds)

    return builds_s


def test_auto_picks_the_faster_build_per_model_and_keeps_it(kernel_file, monkeypatch):
    tiny, wider = Model.random(tiny_config(), name="tiny"), Model.random(tiny_config(dim=48), name="tiny")
    calls = []
    monkeypatch.setattr(timing, "builds_s", planted({"eigen": 2.0, "default": 1.0}, calls))
    assert kernels.verify_options(tiny) == {}  # XLA's defaults were faster
    monkeypatch.setattr(timing, "builds_s", planted({"eigen": 1.0, "default": 2.0}, calls))
    assert kernels.verify_options(tiny) == {}  # measured once: the file's choice stands
    assert kernels.verify_options(wider) == {kernels.YNN: ""}  # another shape: measured again
    assert calls == [(32, kernels.PROBE_T), (48, kernels.PROBE_T)]

    stored = json.loads(kernel_file.read_text())
    assert stored[kernels.model_key(tiny)] == {"build": "default", "eigen_s": 2.0, "default_s": 1.0}
    assert stored[kernels.model_key(wider)]["build"] == "eigen"
    assert kernels.verify_options(tiny) == {} and kernels.verify_options(wider) == {kernels.YNN: ""}
    assert len(calls) == 2  # read back, nothing timed again
    monkeypatch.setattr(transformer, "REVISION", transformer.REVISION + 1)  # another forward
    assert kernels.verify_options(tiny) == {kernels.YNN: ""} and len(calls) == 3  # timed again
    monkeypatch.setattr(jax, "__version__", "0.0.1")  # another jax
    assert kernels.verify_options(tiny) == {kernels.YNN: ""} and len(calls) == 4


def test_the_environment_decides_before_any_measurement(kernel_file, monkeypatch):
    tiny = Model.random(tiny_config())
    monkeypatch.setattr(timing, "builds_s", planted({"eigen": 1.0, "default": 2.0}, calls := []))
    monkeypatch.setenv(kernels.ENV, "default")
    assert kernels.verify_options(tiny) == {}
    monkeypatch.setenv(kernels.ENV, " Eigen ")
    assert kernels.verify_options(tiny) == {kernels.YNN: ""}
    monkeypatch.setenv(kernels.ENV, "auto")
    monkeypatch.setenv("XLA_FLAGS", f"--{kernels.YNN}=LIBRARY_FUSION_TYPE_DOT")
    assert kernels.verify_options(tiny) == {}  # the user's own choice stands
    assert calls == [] and not kernel_file.exists()
    monkeypatch.setenv(kernels.ENV, "fast")
    with pytest.raises(
        ValueError, match=r"^SPECDEC_VERIFY_KERNELS must be one of auto, eigen, default, got 'fast'$"
    ):
        kernels.verify_options(tiny)


def test_a_corrupt_kernel_file_is_named_and_kept(kernel_file):
    kernel_file.write_text('{"k": {"build": "fastest"}}')
    with pytest.raises(ValueError, match=f"^kernel choices {kernel_file} is corrupt .*delete it"):
        kernels.verify_options(Model.random(tiny_config()))
    assert kernel_file.read_text() == '{"k": {"build": "fastest"}}'


def test_builds_are_timed_on_the_model_with_their_own_kernels():
    """``timing.builds_s`` times both builds of the model's pass; the eigen build has no YNNPACK
    fusion and the default build has them (the programs it times differ)."""
    tiny = Model.random(tiny_config())
    seconds = timing.builds_s(tiny, 3, context=16, capacity=32, steps=2, repeats=2, rounds=1)
    assert sorted(seconds) == sorted(kernels.BUILDS) and all(0 < s < 1 for s in seconds.values())
    inputs = timing._step_inputs(tiny, 3, 16, 32, 1)
    compiled = {b: timing._compile_steps(tiny, inputs, None, 2, kernels.OPTIONS[b]) for b in kernels.BUILDS}
    text = {b: program.as_text() for b, program in compiled.items()}
    assert "__ynn_fusion" not in text["eigen"] and "__ynn_fusion" in text["default"]


def test_the_machine_key_names_the_processor():
    key = kernels.machine()
    assert key.startswith(f"{jax.devices()[0].device_kind} x{jax.device_count()}, {platform.machine()}")
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    vector = next((v for v in ("avx512f", "avx2", "avx") if v in flags), None)
    assert vector is None or f"{vector.removesuffix('f')})" in key
