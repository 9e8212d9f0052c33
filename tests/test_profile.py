"""Where a pass's time goes: ``timing.thunk_labels``, ``thunk_seconds`` and ``profile_s``."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from specdec import timing
from specdec.decode import PHASES
from specdec.models import Model, tiny_config

# An optimized HLO text as XLA:CPU prints it, cut down: a loop whose body runs a custom call,
# two fusions (one with a tuple result) and instructions that run no thunk of their own.
HLO = """HloModule jit_steps, entry_computation_layout={(f32[4]{0})->f32[4]{0}}

%fused_computation (param_0: f32[4]) -> f32[4] {
  %param_0 = f32[4]{0} parameter(0)
  ROOT %multiply.1 = f32[4]{0} multiply(f32[4]{0} %param_0, f32[4]{0} %param_0)
}

%body (state: (s32[], f32[4])) -> (s32[], f32[4]) {
  %state = (s32[], f32[4]{0}) parameter(0)
  %x = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %state), index=1
  %y = f32[1,8]{1,0} get-tuple-element((s32[], f32[4]{0}) %state), index=2
  %w = f32[2,8,16]{2,1,0} get-tuple-element((s32[], f32[4]{0}) %state), index=3
  %ffi_call.7 = f32[1,32]{1,0} custom-call(%y, %w), custom_call_target="specdec_panel_matmul"
  %multiply_fusion.2 = f32[4]{0} fusion(f32[4]{0} %x), kind=kLoop, calls=%fused_computation
  %pair_fusion = (f32[4]{0}, s32[4]{0}) fusion(f32[4]{0} %x), kind=kLoop, calls=%fused_computation
  ROOT %tuple.4 = (s32[], f32[4]{0}) tuple(s32[] %i, f32[4]{0} %multiply_fusion.2)
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %while.3 = (s32[], f32[4]{0}) while((s32[], f32[4]{0}) %t), condition=%cond, body=%body
  ROOT %out = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %while.3), index=1
}
"""


def test_thunk_labels_name_custom_calls_by_target_and_largest_operand():
    labels = timing.thunk_labels(HLO)
    assert labels["ffi_call.7"] == "specdec_panel_matmul [2, 8, 16]"
    assert (labels["multiply_fusion.2"], labels["pair_fusion"]) == ("multiply_fusion", "pair_fusion")
    for runs_no_thunk in ("while.3", "state", "x", "w", "tuple.4", "a", "out"):
        assert runs_no_thunk not in labels


def test_thunk_seconds_sums_this_programs_thunk_events_by_label():
    def event(name, dur, op=None, module="jit_steps", ph="X"):
        return {"ph": ph, "name": name, "dur": dur, "args": {"hlo_op": op or name, "hlo_module": module}}

    trace = {
        "traceEvents": [
            event("ffi_call.7", 300.0),
            event("ffi_call.7", 200.0),
            event("multiply_fusion.2", 40.0),
            event("pair_fusion", 10.0),
            event("end: ffi_call.7", 5.0, op="ffi_call.7"),  # a marker, not the thunk
            event("while.3", 900.0),  # the loop's thunk holds the others
            event("ffi_call.7", 700.0, module="jit_other"),  # another program's
            event("ffi_call.7", 50.0, ph="i"),  # an instant, not a thunk
            {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 1000.0},
        ]
    }
    seconds = timing.thunk_seconds(trace, HLO)
    want = {"specdec_panel_matmul [2, 8, 16]": 500e-6, "multiply_fusion": 40e-6, "pair_fusion": 10e-6}
    assert seconds == pytest.approx(want)


def test_a_profile_of_a_model_in_panels_names_each_weights_product_and_the_attention():
    model = Model.random(tiny_config(tie_embeddings=True), seed=0).paneled()
    seconds = timing.profile_s(model, 3, context=8, capacity=16, steps=2, calls=2)

    weights = {leaf.shape for leaf in jax.tree.leaves(model.params) if leaf.ndim == 3}  # panels
    products = {label for label in seconds if label.startswith("specdec_panel_matmul")}
    assert products == {f"specdec_panel_matmul [{', '.join(map(str, shape))}]" for shape in weights}
    cache = model.config.n_kv_heads, model.config.head_dim, 16  # one row's keys [Hkv, Dh, S]
    assert f"specdec_attention [{', '.join(map(str, cache))}]" in seconds
    assert all(s > 0 for s in seconds.values())
    assert list(seconds.values()) == sorted(seconds.values(), reverse=True)


def test_scope_labels_name_each_thunk_by_its_named_scope():
    """The thunks of a compiled function by the ``jax.named_scope`` on their op_name path: the
    scopes asked for, "other" for the rest."""

    def f(x, w):
        with jax.named_scope("first"):
            y = jnp.tanh(x @ w)
        with jax.named_scope("second"):
            return jnp.sort(y, axis=-1) + 1.0

    x = jnp.ones((4, 8))
    hlo = jax.jit(f).lower(x, jnp.ones((8, 8))).compile().as_text()
    labels = timing.scope_labels(hlo, ("first", "second"))
    assert set(labels) == set(timing.thunk_labels(hlo))
    assert {"first", "second"} <= set(labels.values()) <= {"first", "second", "other"}
    assert "second" not in timing.scope_labels(hlo, ("first",)).values()


def test_every_phase_of_a_step_runs_thunks_under_its_named_scope():
    """``decode.PHASES`` are the step's scopes (bench_widths --profile reads them): they label the
    thunks of a compiled speculative loop. Compiled in a fresh process without the persistent
    compilation cache, which keys programs without their metadata (an executable read from it
    keeps the op names of the code that first compiled it)."""
    code = """if True:
        from specdec import drafters, generate, timing
        from specdec.decode import PHASES
        from specdec.models import Model, tiny_config
        target = Model.random(tiny_config(), seed=0)
        drafter = drafters.make("ngram", target)
        generate(target, [[1, 2, 3, 1, 2, 3, 1, 2]], drafter=drafter, gamma=2, max_new_tokens=4, chat=False)
        hlo = target.programs.last_loop().as_text()
        print(*sorted(set(timing.scope_labels(hlo, PHASES).values())))
    """
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["SPECDEC_COMPILE_CACHE"] = "off"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    phases = set(proc.stdout.split())
    assert {"draft", "verify", "accept", "emit", "other"} <= phases <= {*PHASES, "other"}
