"""``specdec.generate``: prompts in, texts and statistics out, around the compiled loop.

Host-side only: tokenise, validate, pad into a prompt block, run the compiled ``prefill`` and
``decode_loop`` (compiled per prompt block and per bucket, kept in the target's ``ProgramCache``), time
each, detokenise.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from specdec import acceptance as acceptance_rules
from specdec import checks, kernels, metrics, sharding
from specdec.decode import SCHEDULES, LoopConfig, decode_loop, prefill
from specdec.drafters.base import tree_size
from specdec.models import Model
from specdec.sampling import Sampling


@dataclasses.dataclass
class GenerationOutput:
    """texts[i], tokens[i] (new tokens only) and stats[i] (see ``metrics.row_stats``) per prompt;
    wall_s: the prefill and the decode loop, measured after ``block_until_ready``; prefill_s: the
    prefill's share of it (its own program, run first); compile_s: 0.0 when cached."""

    texts: list[str]
    tokens: list[list[int]]
    stats: list[dict]
    prompt_tokens: list[list[int]]
    wall_s: float
    prefill_s: float
    compile_s: float


BLOCKS_PER_BUCKET = 16  # prompt blocks per power of two (min_bucket may make them coarser)


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` at least ``n``."""
    return -(-n // multiple) * multiple


def bucket(n: int, min_bucket: int = 16) -> int:
    """A prompt length's shape class: the next power of two, at least ``min_bucket``. The cache
    capacity, hence the decode loop's program, follows from it."""
    return max(min_bucket, 1 << (max(n, 1) - 1).bit_length())


def prompt_block(n: int, min_bucket: int = 16) -> int:
    """The prefill's padded prompt length: n rounded up to a multiple of ``min_bucket`` or of
    1/16 of ``bucket(n)``, whichever is larger, and at most ``bucket(n)`` (270 -> 288, not 512).
    The prefill's compute grows with it; each block is a prefill program of its own, while every
    block of one bucket shares the decode loop's."""
    whole = bucket(n, min_bucket)
    step = max(min_bucket, whole // BLOCKS_PER_BUCKET)
    return min(whole, round_up(max(n, 1), step))


def prefill_width(prompt_len: int, batch: int, prefill_chunk: int) -> int:
    """Prompt positions per row in one prefill pass: the largest divisor of ``prompt_len`` whose
    ``batch`` rows hold at most ``prefill_chunk`` positions (at least 1), so a batch's prefill
    reads ``prefill_chunk`` positions a pass, like a serving engine's chunked prefill, and its
    attention scores stay [B H, c, S] (``models.in_chunks``)."""
    most = max(1, prefill_chunk // batch)
    return max(c for c in range(1, min(most, prompt_len) + 1) if prompt_len % c == 0)


def capacity_for(prompt_bucket: int, max_new_tokens: int, gamma: int) -> int:
    """Cache slots a generation can touch, rounded up to a multiple of 64."""
    need = prompt_bucket + max_new_tokens + gamma + 1
    return round_up(need, 64)


def encode_prompts(model: Model, prompts, chat: bool) -> list[list[int]]:
    """A list of strings (through the chat template when ``chat``) or of token-id lists -> token ids,
    each id checked against the model's vocabulary."""
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence):
        raise TypeError(
            f"prompts must be a list of strings or of token-id lists, got {type(prompts).__name__}; "
            "wrap a single prompt in a list: [prompt]"
        )
    if not prompts:
        raise ValueError("prompts is empty")
    V = model.config.vocab_size
    ids = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if model.tokenizer is None:
                raise ValueError(
                    f"prompts[{i}] is text but model {model.name!r} has no tokenizer; pass token ids"
                )
            if chat:
                prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
            ids.append(model.tokenizer.encode(prompt))
        else:
            ids.append(list(checks.integers(prompt, f"prompts[{i}]", low=0, high=V - 1)))
        if not ids[-1]:
            raise ValueError(f"prompts[{i}] is empty")
    return ids


class ProgramCache:
    """Compiled prefill and decode-loop programs keyed by everything that shapes them, least
    recently used dropped beyond ``max_entries`` of each kind. Each ``Model`` owns one. A
    prefill is compiled per prompt block, chunk and the settings it reads (``cfg.prefill``), a
    loop per setting and shapes: every block of a bucket shares one loop, and every token budget
    one prefill. A speculative loop is compiled with ``kernels.verify_options``; an
    autoregressive loop and the prefills with XLA's defaults."""

    def __init__(self, max_entries: int = 32):
        self.max_entries = checks.integer(max_entries, "max_entries", low=1)
        self._prefills: collections.OrderedDict = collections.OrderedDict()
        self._loops: collections.OrderedDict = collections.OrderedDict()

    def __len__(self) -> int:
        """Compiled programs held: prefills and loops."""
        return len(self._prefills) + len(self._loops)

    def get(self, args, cfg: LoopConfig, prompt: tuple[int, int], target):
        """The compiled (prefill, decode loop) of ``target`` (a ``Model``) for ``args`` (target params,
        drafter, tokens, prompt lengths, cache, key), settings and ``prompt`` = (prompt block,
        positions per row per prefill pass), and the time spent compiling them now (0 if both
        were held)."""
        target_def = target.graphdef
        params, drafter, tokens, lengths, cache, key = args
        shapes = (
            target_def,
            jax.tree.structure(args),
            tuple((a.shape, a.dtype) for a in jax.tree.leaves(args)),
        )
        start = time.perf_counter()

        def compile_prefill():
            prompt_len, chunk = prompt
            return prefill.lower(
                target_def,
                params,
                drafter,
                tokens,
                lengths,
                cache,
                cfg=cfg.prefill,
                prompt_len=prompt_len,
                chunk=chunk,
            ).compile()

        def compile_loop():
            lowered = decode_loop.lower(target_def, params, drafter, first.out_info, lengths, key, cfg=cfg)
            return lowered.compile(compiler_options=kernels.verify_options(target) if cfg.gamma > 0 else {})

        first, new_prefill = self._held(self._prefills, (cfg.prefill, shapes, prompt), compile_prefill)
        loop, new_loop = self._held(self._loops, (cfg, shapes), compile_loop)
        return (first, loop), time.perf_counter() - start if new_prefill or new_loop else 0.0

    def last_loop(self):
        """The compiled decode loop that ``get`` returned last (to profile it)."""
        return next(reversed(self._loops.values()))

    def _held(self, programs: collections.OrderedDict, signature, compile_program):
        """(programs[signature], whether it was compiled now because it was not held)."""
        if signature in programs:
            programs.move_to_end(signature)
            return programs[signature], False
        program = programs[signature] = compile_program()
        while len(programs) > self.max_entries:
            programs.popitem(last=False)
        return program, True


def default_verify_widths(drafter, gamma: int, schedule: str | None, backend: str) -> tuple[int, ...]:
    """The target pass widths ``generate`` compiles besides gamma + 1 unless told: (1,) where a step
    may draft nothing (``drafter.variable_length``: prompt lookup without a match; an adaptive
    ``schedule``) on the CPU backend, else none.

    Each width is a branch of a ``lax.switch``. On a CPU the narrow branch pays: a pass over
    gamma + 1 positions costs 1.15-1.25 decode steps there (batch 1), and prompt lookup ran 1.40x
    over autoregressive decoding with widths 1 and 5 against 1.30x with width 5 alone. On an
    H200 the wide pass costs 1.08-1.26 steps at batch 1, while the switch made an iteration doing
    the same work take 1.79 ms instead of 1.43 ms: no cache is copied, but its wide branch (which
    attends over the cache and the new block apart, then writes the block after the switch) and
    the loop around it launch 689 kernels an iteration against 475, so one width is faster there.
    Both measured by ``experiments/bench_widths.py``; docs/benchmarks.md has the numbers."""
    variable = schedule is not None or getattr(drafter, "variable_length", False)
    return (1,) if variable and gamma > 0 and backend == "cpu" else ()


def generate(
    target: Model,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    drafter=None,
    gamma: int = 4,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    max_new_tokens: int = 64,
    chat: bool = True,
    seed: int = 0,
    acceptance="speculative",
    eos_ids: Sequence[int] | None = None,
    capacity: int | None = None,
    schedule: str | None = None,
    verify_widths: Sequence[int] | None = None,
    min_bucket: int = 16,
    prefill_chunk: int = 2048,
) -> GenerationOutput:
    """Generate a continuation of every prompt in one compiled call.

    drafter: from ``specdec.drafters.make`` (None: autoregressive, gamma ignored).
    prompts: a list of strings (chat-templated when ``chat``) or of token-id lists.
    acceptance: a rule of ``specdec.acceptance`` or its name: "speculative" (lossless; exact
        greedy matching at temperature 0) or "typical_lossy" (Medusa's, NOT lossless).
    eos_ids: stop tokens (default: the tokenizer's). capacity: cache slots per row
        (default: just enough for the prompt bucket, the budget and one draft block).
    schedule: None (draft gamma tokens per step) or "heuristic" (adaptive gamma: +2 after
        a fully accepted block, -1 otherwise, between 1 and gamma).
    verify_widths: target pass widths to compile besides gamma+1 (``default_verify_widths``:
        (1,) on the CPU backend for drafters that may draft nothing and with a schedule, so such
        a step costs one decode step; otherwise none).
    min_bucket: the shortest padded prompt length, and the step of the prompt blocks below 16
        min_bucket (``prompt_block``; the cache capacity follows the power-of-two ``bucket``).
    prefill_chunk: prompt positions, summed over rows, read by one prefill pass: a longer batch
        of prompts is read in chunks (``prefill_width``), which bounds the prefill's memory.
    Every setting is validated before anything is compiled.
    """
    sampling = Sampling(temperature, top_k, top_p)
    rule = acceptance_rules.make(acceptance) if isinstance(acceptance, str) else acceptance
    if isinstance(rule, type) or not hasattr(rule, "for_sampling"):
        raise TypeError(
            f"acceptance must be a rule name ({', '.join(acceptance_rules.RULES)}) or rule, got {rule!r}"
        )
    rule.for_sampling(sampling)  # a rule that refuses these sampling settings says so here, not in tracing
    max_new_tokens = checks.integer(max_new_tokens, "max_new_tokens", low=1)
    seed = checks.integer(seed, "seed")
    min_bucket = checks.integer(min_bucket, "min_bucket", low=1)
    prefill_chunk = checks.integer(prefill_chunk, "prefill_chunk", low=1)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}; got {schedule!r}")
    # Autoregressive decoding drafts nothing: one position per step.
    gamma = 0 if drafter is None else checks.integer(gamma, "gamma", low=1)
    if verify_widths is None:
        verify_widths = default_verify_widths(drafter, gamma, schedule, jax.default_backend())
    widths = checks.integers(verify_widths, "verify_widths", low=1, high=gamma + 1)
    if drafter is not None and drafter.vocab_size != target.config.vocab_size:
        raise ValueError(
            f"drafter vocab_size {drafter.vocab_size} differs from target vocab_size "
            f"{target.config.vocab_size}; they must share one tokenizer"
        )
    # A verify pass writes gamma + 1 slots after the cached tokens, a tree's N + 1; a tree's commit
    # moves gamma slots (its deepest path) after the pending token.
    lookahead = max(tree_size(drafter, gamma) or 0, gamma)
    ids = encode_prompts(target, prompts, chat)
    longest = max(len(x) for x in ids)
    prompt_len = prompt_block(longest, min_bucket)
    needed = capacity_for(bucket(longest, min_bucket), max_new_tokens, lookahead)
    capacity = needed if capacity is None else checks.integer(capacity, "capacity", low=1)
    if prompt_len + max_new_tokens + lookahead + 1 > capacity:
        raise ValueError(
            f"prompt of {longest} tokens (block {prompt_len}) + max_new_tokens {max_new_tokens} + "
            f"{lookahead + 1} verified positions does not fit the cache capacity {capacity}"
        )
    window = target.config.sliding_window
    if tree_size(drafter, gamma) is not None and window is not None and window < capacity:
        raise ValueError(
            f"token trees need a cache within the target's sliding window ({window} tokens): "
            f"capacity {capacity} is larger (a tree's slots are not its positions)"
        )
    if longest + max_new_tokens > target.config.max_position:
        raise ValueError(
            f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the model's "
            f"max_position {target.config.max_position}"
        )
    if eos_ids is None:
        eos_ids = target.tokenizer.eos_ids if target.tokenizer is not None else ()
    cfg = LoopConfig(
        sampling=sampling,
        gamma=gamma,
        max_new_tokens=max_new_tokens,
        eos_ids=checks.integers(eos_ids, "eos_ids", low=0, high=target.config.vocab_size - 1),
        rule=rule,
        schedule=schedule if drafter is not None else None,
        verify_widths=widths,
    )

    B = len(ids)
    buffer = np.zeros((B, capacity), np.int32)
    for b, row in enumerate(ids):
        buffer[b, : len(row)] = row
    lengths = np.array([len(x) for x in ids], np.int32)
    if target.mesh is None:
        rows = (jnp.asarray(buffer), jnp.asarray(lengths))
    else:  # rows split over the mesh's data axis; a drafter not made by drafters.make put on the mesh
        rows = tuple(sharding.place_batch(a, target.mesh) for a in (buffer, lengths))
        drafter = sharding.place_drafter(drafter, target.mesh)
    cache = target.init_cache(B, capacity)
    key = jax.random.key(seed)
    prompt_buffer, prompt_lengths = rows
    args = (target.params, drafter, prompt_buffer, prompt_lengths, cache, key)
    chunk = prefill_width(prompt_len, B, prefill_chunk)
    (first, loop), compile_s = target.programs.get(args, cfg, (prompt_len, chunk), target)
    start = time.perf_counter()
    state = jax.block_until_ready(first(target.params, drafter, prompt_buffer, prompt_lengths, cache))
    prefill_s = time.perf_counter() - start
    state = jax.block_until_ready(loop(target.params, drafter, state, prompt_lengths, key))
    tokens, out_lengths, stats = state.tokens, state.lengths, state.stats
    wall_s = time.perf_counter() - start
    if jax.process_count() > 1:  # rows on several processes' devices: every process gathers them all
        tokens, out_lengths, stats = multihost_utils.process_allgather(
            (tokens, out_lengths, stats), tiled=True
        )

    tokens, out_lengths = np.asarray(tokens), np.asarray(out_lengths)
    new = [tokens[b, lengths[b] : out_lengths[b]].tolist() for b in range(B)]
    texts = [target.tokenizer.decode(t) if target.tokenizer is not None else "" for t in new]
    return GenerationOutput(
        texts, new, metrics.row_stats(stats, wall_s, prefill_s), ids, wall_s, prefill_s, compile_s
    )


def generate_warm(target: Model, prompts, *, repeats: int = 1, **kw) -> GenerationOutput:
    """``generate`` timed warm: a first call that compiled is run again, so ``wall_s`` never
    includes compilation or first-run effects.

    repeats: warm calls to time (the first call counts when it did not compile); the output of
    the median-wall call is returned (the lower median for an even count), so its wall_s,
    stats and tokens come from one call. compile_s is the first call's. Keyword arguments go
    to ``generate`` unchanged.
    """
    checks.integer(repeats, "repeats", low=1)
    first = generate(target, prompts, **kw)
    warm = [] if first.compile_s > 0 else [first]
    while len(warm) < repeats:
        warm.append(generate(target, prompts, **kw))
    median = median_run(warm, lambda out: out.wall_s)
    return dataclasses.replace(median, compile_s=first.compile_s)


def median_run(runs: list, wall):
    """The run of ``runs`` whose ``wall(run)`` is the median (the lower one for an even count): one
    run's own numbers, never a mix of several."""
    return sorted(runs, key=wall)[(len(runs) - 1) // 2]
