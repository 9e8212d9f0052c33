"""Wall-clock measurements of the pieces of a decode step: medians after warm-up, compile excluded.

- ``median_s``: the median time of a call, after warm-up, synchronised with ``block_until_ready``.
- ``forward_s``: one target (or layer-subset) forward over T positions after a given context;
  ``passes_s``: several widths at once, ``interleaved_s`` (runs alternated over rounds).
- ``verify_cost``: the measured verify-cost curve r(T) = cost(T) / cost(1) as a ``theory.VerifyCost``.
- ``draft_cost_ratio``: c = cost of one drafter step / cost of one target decode step.
- ``thunks``: what a compiled program runs, instruction by instruction (its XLA:CPU thunks);
  ``profile_s``: where a pass's time goes, thunk by thunk, from an XLA profile.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gzip
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from specdec import kernels
from specdec.drafters.base import Context, Verified, tree_size
from specdec.models import Model, forward, native
from specdec.sampling import Sampling, argmax, probs
from specdec.theory import VerifyCost


def median_s(fn, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


@functools.partial(jax.jit, static_argnames=("graphdef", "layers", "steps"), donate_argnames="cache")
def _score_steps(graphdef, params, tokens, positions, cache, layers=None, steps=1):
    """``steps`` forward passes at the same positions inside one program (as in the decode loop:
    every position's logits turned into greedy probabilities, as a verify pass's are); the cache
    (donated) comes back with its lengths as given, so calls may share it."""
    start = cache.lengths

    def step(_, carry):
        cache, token = carry
        logits, cache, _ = forward(
            graphdef, params, tokens + token, positions, cache.with_lengths(start), layers=layers
        )
        return cache, argmax(probs(logits, Sampling())[:, -1:]) % 2

    cache, token = jax.lax.fori_loop(0, steps, step, (cache, jnp.zeros((tokens.shape[0], 1), jnp.int32)))
    return cache.with_lengths(start), token


_NOT_THUNKS = frozenset({"parameter", "get-tuple-element", "tuple", "bitcast", "constant"})


def thunks(compiled) -> list[tuple[str, str]]:
    """(opcode, result shape) of every instruction a compiled program runs on its own: those of its
    entry and control-flow computations (loop bodies and conditions, branches), each one XLA:CPU
    thunk; instructions inside fusions run within their fusion's thunk, and parameters, tuples,
    bitcasts and constants run nothing. A fusion's opcode is "fusion"."""
    instructions = _instructions(compiled.as_text())
    return [(opcode, shape) for _, shape, opcode, _ in instructions if opcode not in _NOT_THUNKS]


# name = shape{layout} opcode(operands), attributes; the shape an array's, or a tuple's "(...)"
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\S+?)(?:\{[\d,]*\})? ([\w\-]+)\((.*)$", re.M
)


def _instructions(hlo: str, fused: bool = False) -> list[tuple[str, str, str, str]]:
    """(name, result shape without layout, opcode, the rest of the line) of each instruction of an
    optimized HLO text, in its entry and control-flow computations (with ``fused``, in fusions'
    computations too)."""
    inside_fusions = set(re.findall(r"calls=(%[\w.\-]+)", hlo))
    out = []
    for computation in re.split(r"\n(?=\S)", hlo):
        name = re.match(r"(?:ENTRY )?(%[\w.\-]+)", computation)
        if name is not None and (fused or name.group(1) not in inside_fusions):
            out += _INSTRUCTION.findall(computation)
    return out


def step_program(
    model: Model,
    T: int,
    *,
    context: int = 256,
    capacity: int = 512,
    batch: int = 1,
    layers=None,
    steps=8,
    speculative: bool | None = None,
):
    """The compiled program ``forward_s`` times: ``steps`` forward passes of T positions, built as
    the decode loops build them (``kernels``): with the verify kernels when ``speculative``, by
    default when the pass verifies (T >= 2) or drafts (a layer subset), both inside a speculative
    loop; ``speculative=True`` at T = 1 is a speculative loop's one-position (narrow) pass."""
    inputs = _step_inputs(model, T, context, capacity, batch, layers)
    return _compile_steps(model, inputs, layers, steps, _options(model, T, layers, speculative))


def _options(model: Model, T: int, layers, speculative: bool | None) -> dict:
    """The compiler options of a pass over T positions (``kernels``): the verify kernels when
    ``speculative`` (None: when the pass verifies, T >= 2, or drafts, a layer subset)."""
    if speculative is None:
        speculative = T > 1 or layers is not None
    return kernels.verify_options(model) if speculative else {}


def _compile_steps(model: Model, inputs, layers, steps: int, options: dict):
    """``_score_steps`` compiled for ``inputs`` (tokens, positions, cache) with ``options``."""
    tokens, positions, cache = inputs
    lowered = _score_steps.lower(
        model.graphdef, model.params, tokens, positions, cache, layers=layers, steps=steps
    )
    return lowered.compile(compiler_options=options)


def _step_inputs(model: Model, T: int, context: int, capacity: int, batch: int, layers=None):
    """tokens and positions [batch, T] after ``context`` cached tokens, and that cache."""
    return (*_step_tokens(T, context, batch), _step_cache(model, context, capacity, batch, layers))


def _step_tokens(T: int, context: int, batch: int):
    """tokens and positions [batch, T] after ``context`` cached tokens."""
    positions = jnp.broadcast_to(context + jnp.arange(T)[None], (batch, T))
    return jnp.ones((batch, T), jnp.int32), positions


def _step_cache(model: Model, context: int, capacity: int, batch: int, layers=None):
    """A cache of ``capacity`` slots per row holding ``context`` tokens (of ``layers``' count)."""
    n_layers = None if layers is None else len(layers)
    return model.init_cache(batch, capacity, n_layers).with_lengths(context)


def forward_s(
    model: Model,
    T: int,
    *,
    context: int = 256,
    capacity: int = 512,
    batch: int = 1,
    layers=None,
    steps=8,
    repeats=5,
    speculative: bool | None = None,
):
    """Median seconds of one forward (plus greedy sampling) of T positions in each of ``batch`` rows
    after ``context`` cached tokens, measured as ``steps`` passes inside one compiled loop (no
    per-call dispatch, as in ``decode_loop``); ``layers``: a layer subset (a self-speculative draft);
    ``speculative``: built as inside a speculative loop (``step_program``)."""
    run = pass_run(model, T, context, capacity, batch, layers, steps, _options(model, T, layers, speculative))
    return median_s(run, repeats) / steps


def pass_run(model: Model, T: int, context, capacity, batch, layers, steps, options, held=None) -> PassRun:
    """A call of the compiled ``steps`` passes over T positions that carries its donated cache from
    call to call: what ``forward_s`` times, for a benchmark that times it beside other runs
    (``interleaved_s``). held: {"cache": ...} shared by runs over one cache shape (None: this run
    owns its cache), so runs timed one after another hold one cache in memory, not one each (at
    batch 32 and 1,024 slots a SmolLM2 cache is 1.6 GB)."""
    state = {} if held is None else held
    if "cache" not in state:  # a holder's cache serves every run over it: none is made to be dropped
        state["cache"] = _step_cache(model, context, capacity, batch, layers)
    tokens, positions = _step_tokens(T, context, batch)
    program = _compile_steps(model, (tokens, positions, state["cache"]), layers, steps, options)
    return PassRun(program, model.params, tokens, positions, state)


@dataclasses.dataclass(frozen=True)
class PassRun:
    """``pass_run``'s call: ``program`` (compiled) run on ``state["cache"]`` (donated, replaced by
    the cache it returns); returns the program's token [B, 1]."""

    program: Any
    params: Any
    tokens: jax.Array
    positions: jax.Array
    state: dict

    def __call__(self):
        cache = self.state["cache"]
        self.state["cache"], token = self.program(self.params, self.tokens, self.positions, cache)
        return token


def profile_s(
    model: Model, T: int, *, context: int = 256, capacity: int = 512, batch: int = 1, steps=8, calls=10
) -> dict[str, float]:
    """Seconds of one pass over T positions (built as ``forward_s`` builds it) by what runs them,
    from an XLA profile (``jax.profiler``) of ``calls`` calls after warm-up: {label: seconds},
    largest first (``thunk_labels``; thunk times under the profiler, dispatch between them not
    counted)."""
    run = pass_run(model, T, context, capacity, batch, None, steps, _options(model, T, None, None))
    for _ in range(3):
        jax.block_until_ready(run())
    _, trace = traced(lambda: [jax.block_until_ready(run()) for _ in range(calls)])
    seconds = thunk_seconds(trace, run.program.as_text())
    return {label: s / (calls * steps) for label, s in sorted(seconds.items(), key=lambda kv: -kv[1])}


def traced(call):
    """(call(), the Chrome/Perfetto trace of the call as a dict): ``call`` run once under
    ``jax.profiler``."""
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            result = call()
        trace = json.loads(gzip.decompress(next(Path(folder).rglob("perfetto_trace.json.gz")).read_bytes()))
    return result, trace


def thunk_seconds(trace: dict, hlo: str, labels: dict[str, str] | None = None) -> dict[str, float]:
    """{label: seconds} summed over the thunk events of a Chrome/Perfetto ``trace`` (its
    "traceEvents") that ran instructions of the program whose optimized HLO text is ``hlo``,
    labelled by ``labels`` {instruction name: label} (default ``thunk_labels(hlo)``); events of
    other programs and of the runtime are left out."""
    module = re.match(r"HloModule ([\w.\-]+)", hlo).group(1)
    labels = thunk_labels(hlo) if labels is None else labels
    seconds = collections.Counter()
    for event in trace["traceEvents"]:
        args = event.get("args", {})
        op = args.get("hlo_op")  # a thunk's own event is named after its instruction
        thunk = event.get("ph") == "X" and event.get("name") == op and op in labels
        if thunk and args.get("hlo_module") == module:
            seconds[labels[op]] += event["dur"] * 1e-6  # microseconds
    return dict(seconds)


_CONTROL_FLOW = frozenset({"while", "conditional", "call"})  # thunks that run other thunks


def scope_labels(hlo: str, scopes) -> dict[str, str]:
    """{instruction name: scope} for the instructions of ``thunk_labels``: the first of ``scopes``
    (names given to ``jax.named_scope``) on the path of its op_name ("jit(decode_loop)/while/body/
    verify/cond/..." -> "verify"), else "other"."""
    thunks = thunk_labels(hlo)
    labels = {}
    for name, _, _, rest in _instructions(hlo):
        if name in thunks:
            path = re.search(r'op_name="([^"]*)"', rest)
            parts = path.group(1).split("/") if path else []
            labels[name] = next((part for part in parts if part in scopes), "other")
    return labels


def thunk_labels(hlo: str) -> dict[str, str]:
    """{instruction name: label} of the instructions of an optimized HLO text that run as thunks
    of their own (``thunks``), control flow left out: a custom call's label is its target and the
    shape of its largest operand (a product's weight, an attention's cache block), any other's its
    name less XLA's numeric suffix (a fusion's name says what it fuses:
    "bitcast_dynamic-update-slice_fusion")."""
    shapes = {}  # an array instruction's dimensions (a tuple's are left out)
    for name, shape, _, _ in _instructions(hlo, fused=True):
        array = re.fullmatch(r"\w+\[([\d,]*)\]", shape)
        if array is not None:
            shapes[name] = tuple(int(d) for d in array.group(1).split(",") if d)
    labels = {}
    for name, _, opcode, rest in _instructions(hlo):
        if opcode in _NOT_THUNKS or opcode in _CONTROL_FLOW:
            continue
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        if target is None:
            labels[name] = re.sub(r"\.\d+$", "", name)
            continue
        operands = [shapes.get(op, ()) for op in re.findall(r"%([\w.\-]+)", rest.split(")")[0])]
        largest = max(operands, key=np.prod, default=())
        labels[name] = f"{target.group(1)} [{', '.join(map(str, largest))}]"
    return labels


def interleaved_s(runs: dict, repeats: int = 5, rounds: int = 3, warmup: int = 3) -> dict:
    """{label: seconds} of each run in ``runs`` ({label: fn}): ``median_s`` per round (after
    ``warmup`` calls), the runs alternated within each round, the median over ``rounds`` rounds
    (a minute's drift on a shared machine moves every run alike instead of one). Each round
    starts one run later than the one before (a, b, c; b, c, a; ...): a run slowed by the one
    before it, or by its place in the round, is not always the same run."""
    times = {label: [] for label in runs}
    labels = list(runs)
    for i in range(rounds):
        shift = i % len(labels)
        for label in labels[shift:] + labels[:shift]:
            times[label].append(median_s(runs[label], repeats, warmup))
    return {label: float(np.median(t)) for label, t in times.items()}


def passes_s(
    model: Model, widths, *, narrow=False, context=256, capacity=512, batch=1, steps=8, repeats=5, rounds=3
) -> dict:
    """{T: seconds} of one pass over T positions for each of ``widths`` (built as ``forward_s``
    builds them) and, with ``narrow``, {"narrow": seconds} of the one-position pass of a
    speculative loop; the passes ``interleaved_s``."""
    specs = {T: (T, _options(model, T, None, None)) for T in widths}
    if narrow:
        specs["narrow"] = (1, _options(model, 1, None, True))
    return _labelled_passes_s(model, specs, context, capacity, batch, steps, repeats, rounds)


def builds_s(model: Model, T: int, *, context=256, capacity=512, steps=8, repeats=5, rounds=3) -> dict:
    """{build: seconds} of one pass over T positions compiled as each of ``kernels.BUILDS``,
    ``interleaved_s`` (``kernels.measured_build`` picks the faster)."""
    specs = {b: (T, kernels.OPTIONS[b]) for b in kernels.BUILDS}
    return _labelled_passes_s(model, specs, context, capacity, 1, steps, repeats, rounds)


def variants_s(
    model: Model, widths, variants: dict, *, context=256, capacity=512, batch=1, steps=8, repeats=5, rounds=3
) -> dict:
    """{(label, T): seconds of one pass} for each kernel variant ``variants`` {label: {handler:
    target}} ({}: the built-in kernels; ``native.build_variant`` builds the others) and each of
    ``widths``: the passes (built as ``forward_s`` builds them) compiled under
    ``native.substituted``, then all ``interleaved_s``, so variants are compared in one process
    and one stretch of time."""
    held, runs = {}, {}  # every pass reads the same cache
    for label, targets in variants.items():
        with native.substituted(targets):
            for T in widths:
                options = _options(model, T, None, None)
                runs[label, T] = pass_run(model, T, context, capacity, batch, None, steps, options, held)
    return {key: s / steps for key, s in interleaved_s(runs, repeats, rounds).items()}


def _labelled_passes_s(model: Model, specs: dict, context, capacity, batch, steps, repeats, rounds) -> dict:
    """{label: seconds of one pass} for ``specs`` {label: (T, compiler options)}, ``interleaved_s``."""
    held = {}  # every pass reads the same [B, capacity] cache: one buffer, passed from run to run
    runs = {
        label: pass_run(model, T, context, capacity, batch, None, steps, options, held)
        for label, (T, options) in specs.items()
    }
    return {label: s / steps for label, s in interleaved_s(runs, repeats, rounds).items()}


def verify_cost(model: Model, widths=(1, 2, 3, 4, 5, 6, 8, 12, 16), **kw) -> tuple[VerifyCost, dict]:
    """The measured r(T) and the raw latencies {T: seconds} (``passes_s``)."""
    latencies = passes_s(model, widths, **kw)
    return VerifyCost.from_latencies(latencies), latencies


@functools.partial(jax.jit, static_argnames="steps")
def _draft_steps(drafter, state, context: Context, key, hidden, steps=8):
    """``steps`` one-token drafting steps (propose, then commit) inside
    one program, as in ``decode_loop``; each reads tokens the previous one changed, so none can be
    hoisted out of the loop. hidden [B, 2, L D]: verified hidden states (None unless needs_features)."""
    lengths = context.lengths

    def step(i, carry):
        state, shift = carry
        ctx = dataclasses.replace(context, tokens=context.tokens + shift)
        draft, _, state = drafter.propose(state, ctx, 1, jax.random.fold_in(key, i))
        # The draft rejected, its correction token next: a full block (and a draft model's catch-up
        # forward) is the exception, so one step costs one proposal plus the commit's own work.
        path = jnp.concatenate([draft, draft], axis=1)  # [B, 2]
        verified = Verified(start=lengths - 1, n_accepted=jnp.zeros_like(lengths), tokens=path, hidden=hidden)
        return drafter.commit(state, verified), draft[:, :1] % 2

    return jax.lax.fori_loop(0, steps, step, (state, jnp.zeros((lengths.shape[0], 1), jnp.int32)))[1]


@functools.partial(jax.jit, static_argnames=("gamma", "steps"))
def _tree_steps(drafter, state, context: Context, key, hidden, gamma: int, steps=8):
    """``steps`` tree proposals of depth <= gamma, each committed with nothing accepted."""
    lengths = context.lengths

    def step(i, carry):
        state, shift = carry
        ctx = dataclasses.replace(context, tokens=context.tokens + shift)
        tree, state = drafter.propose(state, ctx, gamma, jax.random.fold_in(key, i))
        n = jnp.zeros_like(lengths)
        B = lengths.shape[0]
        path = jnp.broadcast_to(tree.tokens[:, :1], (B, gamma + 1))
        nodes = jnp.zeros((B, gamma), jnp.int32)
        verified = Verified(start=lengths - 1, n_accepted=n, tokens=path, hidden=hidden, nodes=nodes)
        return drafter.commit(state, verified), tree.tokens[:, :1] % 2

    return jax.lax.fori_loop(0, steps, step, (state, jnp.zeros((lengths.shape[0], 1), jnp.int32)))[1]


def draft_cost_ratio(
    target: Model,
    drafter,
    *,
    gamma: int = 1,
    context: int = 256,
    capacity: int = 512,
    batch: int = 1,
    repeats=7,
    rounds=3,
    steps=8,
) -> float:
    """c: seconds of one drafting step of one token (``propose`` + ``commit``) over one target
    decode step, both timed as ``steps`` calls inside one compiled loop, ``interleaved_s`` (no per-call
    dispatch, as in ``decode_loop``; timing a lone jitted call would add the dispatch, which on
    a GPU is a large share of a step). A tree drafter: one whole tree of depth <= gamma per
    proposal, divided by its depth (``drafter.depth(gamma)``: its draft forward passes)."""
    if drafter is None:
        return 0.0
    ctx = Context(
        tokens=jnp.ones((batch, capacity), jnp.int32),
        lengths=jnp.full((batch,), context),
        budget=jnp.ones((batch,), jnp.int32),
        sampling=Sampling(),
        prompt_len=context,
    )
    if drafter.needs_features:
        width = target.config.dim * len(drafter.feature_layers)
        hidden = lambda T: jnp.zeros((batch, T, width), target.dtype)
    else:
        hidden = lambda T: None
    state = jax.jit(drafter.init)(ctx, hidden(context))
    key = jax.random.key(0)
    options = kernels.verify_options(target)  # drafting runs inside a speculative loop
    if tree_size(drafter, gamma) is not None:
        args = (drafter, state, ctx, key, hidden(gamma + 1))
        program = _tree_steps.lower(*args, gamma, steps=steps).compile(compiler_options=options)
        passes = steps * drafter.depth(gamma)
    else:
        args = (drafter, state, ctx, key, hidden(2))
        program = _draft_steps.lower(*args, steps=steps).compile(compiler_options=options)
        passes = steps
    step = pass_run(target, 1, context, capacity, batch, None, steps, {})
    seconds = interleaved_s({"draft": lambda: program(*args), "step": step}, repeats, rounds)
    return (seconds["draft"] / passes) / (seconds["step"] / steps)
