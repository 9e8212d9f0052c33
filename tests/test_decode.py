"""The compiled loop on tiny models: greedy losslessness, batching, EOS, budgets, compiles, bad input."""

import contextlib
import itertools

import jax
import pytest

import specdec
from specdec import drafters, generation, kernels, timing
from specdec.models import Model, tiny_config

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [3, 14, 15, 9, 2, 6, 5, 3, 5, 8, 9, 7], [5, 6]]


@pytest.fixture(scope="module")
def target():
    return Model.random(tiny_config(), seed=0)


@pytest.fixture(scope="module")
def drafts(target):
    """A good draft (the target's first layer), a perfect one (the target) and a useless one."""
    return {
        "truncated": drafters.make("draft_model", target, layers=1),
        "perfect": drafters.make("draft_model", target),
        "useless": drafters.make("draft_model", target, draft=Model.random(tiny_config(), seed=7)),
    }


@contextlib.contextmanager
def count_compiles():
    """Counts XLA backend compilations inside the block."""
    counter = {"n": 0}

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            counter["n"] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def run(target, prompts, **kw):
    kw.setdefault("max_new_tokens", 24)
    return specdec.generate(target, prompts, chat=False, eos_ids=kw.pop("eos_ids", ()), **kw)


@pytest.mark.parametrize("gamma", [1, 3, 5])
@pytest.mark.parametrize("kind", ["truncated", "perfect", "useless"])
def test_greedy_speculative_equals_autoregressive(target, drafts, kind, gamma):
    auto = run(target, PROMPTS)
    spec = run(target, PROMPTS, drafter=drafts[kind], gamma=gamma)
    assert spec.tokens == auto.tokens
    assert all(len(t) == 24 for t in spec.tokens)
    alpha = [s["alpha"] for s in spec.stats]
    if kind == "perfect":
        assert alpha == [1.0] * 4
    if kind == "useless":
        assert max(alpha) < 0.5
    # Batch of one gives the same tokens as the batch of four.
    single = run(target, PROMPTS[2:3], drafter=drafts[kind], gamma=gamma)
    assert single.tokens[0] == auto.tokens[2]


def test_statistics_are_consistent(target, drafts):
    gamma = 3
    out = run(target, PROMPTS, drafter=drafts["truncated"], gamma=gamma, max_new_tokens=40)
    for s in out.stats:
        assert s["drafted"] == gamma * s["target_calls"]
        assert sum(s["accepted_hist"]) == s["target_calls"]
        assert sum(n * c for n, c in enumerate(s["accepted_hist"])) == s["accepted"]
        assert s["tau"] == pytest.approx(s["new_tokens"] / s["target_calls"])
        # Every step judges drafts up to its first rejection: one rejection per step that
        # did not accept the whole block, and alpha is the rate over the judged drafts.
        assert s["rejected"] == s["target_calls"] - s["accepted_hist"][gamma]
        assert s["alpha"] == pytest.approx(s["accepted"] / (s["accepted"] + s["rejected"]))
        assert s["alpha"] > s["accepted"] / s["drafted"]
        # Position i is accepted only if every earlier one was.
        rates = s["accept_by_position"]
        assert all(a >= b for a, b in itertools.pairwise(rates))
        assert s["new_tokens"] == 40
    auto = run(target, PROMPTS, max_new_tokens=40)
    assert [s["target_calls"] for s in auto.stats] == [40] * 4
    assert [s["tau"] for s in auto.stats] == [1.0] * 4
    # The prefill, its own program, is timed within the call's wall time; every row shares both.
    for o in (out, auto):
        assert 0 < o.prefill_s < o.wall_s
        assert {(s["wall_s"], s["prefill_s"]) for s in o.stats} == {(o.wall_s, o.prefill_s)}


def test_eos_stops_each_row_exactly(target, drafts):
    auto = run(target, PROMPTS, max_new_tokens=30)
    eos = auto.tokens[0][6]  # a token row 0 emits at step 7
    stopped = run(target, PROMPTS, drafter=drafts["perfect"], gamma=5, max_new_tokens=30, eos_ids=[eos])
    for full, got in zip(auto.tokens, stopped.tokens, strict=True):
        cut = full.index(eos) + 1 if eos in full else len(full)
        assert got == full[:cut]
    assert stopped.tokens[0][-1] == eos and len(stopped.tokens[0]) <= 7


def test_eos_as_first_drafted_token(target, drafts):
    auto = run(target, PROMPTS[:1], max_new_tokens=8)
    first = auto.tokens[0][0]  # the perfect draft's first proposal is this token
    out = run(target, PROMPTS[:1], drafter=drafts["perfect"], gamma=4, eos_ids=[first])
    assert out.tokens == [[first]]
    assert out.stats[0]["target_calls"] == 1


@pytest.mark.parametrize("max_new", [1, 2])
def test_budget_smaller_than_gamma(target, drafts, max_new):
    auto = run(target, PROMPTS, max_new_tokens=max_new)
    spec = run(target, PROMPTS, drafter=drafts["perfect"], gamma=5, max_new_tokens=max_new)
    assert spec.tokens == auto.tokens
    assert all(len(t) == max_new for t in spec.tokens)


def test_prompt_that_nearly_fills_the_cache(target, drafts):
    prompt = [(7 * i) % 60 + 1 for i in range(60)]  # bucket 64
    gamma, max_new = 3, 11
    capacity = 64 + max_new + gamma + 1  # exactly what the loop may touch
    auto = run(target, [prompt], max_new_tokens=max_new, capacity=capacity)
    spec = run(
        target, [prompt], drafter=drafts["truncated"], gamma=gamma, max_new_tokens=max_new, capacity=capacity
    )
    assert spec.tokens == auto.tokens and len(spec.tokens[0]) == max_new
    with pytest.raises(ValueError, match="capacity"):
        run(
            target,
            [prompt],
            drafter=drafts["truncated"],
            gamma=gamma,
            max_new_tokens=max_new,
            capacity=capacity - 1,
        )


def test_one_compile_per_bucket(target, drafts):
    kw = dict(drafter=drafts["truncated"], gamma=2, max_new_tokens=12)
    with count_compiles() as compiles:
        first = run(target, [[1, 2, 3], [4, 5, 6, 7, 8]], **kw)
    assert compiles["n"] >= 1 and first.compile_s > 0
    with count_compiles() as compiles:
        again = run(target, [[9, 9, 9, 9, 9, 9, 9, 9, 9], [2]], **kw)  # same bucket (16), new prompts
        other = drafters.make("draft_model", Model.random(tiny_config(), seed=9), layers=1)
        useless = run(target, [[3, 3], [1, 2, 3]], **{**kw, "drafter": other})  # new draft weights
    assert compiles["n"] == 0
    assert again.compile_s == 0.0 and useless.compile_s == 0.0
    with count_compiles() as compiles:
        run(target, [list(range(1, 20))], **kw)  # bucket 32 and batch 1: a new program
    assert compiles["n"] >= 1


def test_prompt_blocks_pad_less_than_buckets():
    assert [generation.prompt_block(n) for n in (1, 16, 17, 43, 130, 256, 257, 270, 1000)] == [
        16,
        16,
        32,
        48,
        144,
        256,
        288,
        288,
        1024,
    ]
    assert [generation.bucket(n) for n in (43, 270)] == [64, 512]
    assert [generation.prompt_block(n, min_bucket=512) for n in (1, 270, 512, 600)] == [512, 512, 512, 1024]
    assert generation.prompt_block(30, min_bucket=24) == 32  # never past the bucket the cache is sized by
    assert generation.prompt_block(101, min_bucket=100) == 128


def test_each_prompt_block_compiles_a_prefill_and_shares_the_loop(target, drafts):
    """Prompts of 40 and 60 tokens share a bucket (64): the second compiles its prefill only, and
    the blocks (48 and 64 tokens) give the tokens a whole-bucket prefill gives."""
    kw = dict(drafter=drafts["truncated"], gamma=2, max_new_tokens=8)
    prompts = [[(7 * i) % 60 + 1 for i in range(n)] for n in (40, 60)]
    programs = generation.ProgramCache()
    model = Model.random(tiny_config(), seed=0)
    object.__setattr__(model, "programs", programs)
    blocks = [run(model, [p], **kw) for p in prompts]
    assert (len(programs._prefills), len(programs._loops)) == (2, 1)
    assert blocks[1].compile_s > 0
    whole = [run(model, [p], min_bucket=64, **kw) for p in prompts]
    assert [b.tokens for b in blocks] == [w.tokens for w in whole]
    longer = run(model, prompts[:1], **dict(kw, max_new_tokens=12))  # a new loop, the same prefill
    assert (len(programs._prefills), len(programs._loops)) == (2, 2)
    assert longer.tokens[0][:8] == blocks[0].tokens[0]


def test_prefill_width_divides_the_block_within_the_chunk():
    width = generation.prefill_width
    assert [width(288, 1, 2048), width(1024, 32, 2048), width(3328, 32, 2048), width(3328, 3, 2048)] == [
        288,
        64,
        64,
        416,
    ]
    assert [width(48, 2, 16), width(13, 1, 4), width(64, 4096, 2048)] == [8, 1, 1]


def test_a_chunked_prefill_generates_the_same_tokens(target, drafts):
    """Two 40-token prompts (block 48) read 16 positions a pass (6 chunks of 8 a row) give the
    tokens one pass gives; the chunked prefill is a program of its own, the loop is shared."""
    prompts = [[(7 * i) % 60 + 1 for i in range(40)], [(5 * i) % 50 + 3 for i in range(33)]]
    programs = generation.ProgramCache()
    model = Model.random(tiny_config(), seed=0)
    object.__setattr__(model, "programs", programs)
    kw = dict(drafter=drafters.make("draft_model", model, layers=1), gamma=3, max_new_tokens=12)
    one, chunked = (run(model, prompts, prefill_chunk=n, **kw) for n in (2048, 16))
    assert chunked.tokens == one.tokens
    assert (len(programs._prefills), len(programs._loops)) == (2, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(gamma=0), "gamma must be >= 1"),
        (dict(prefill_chunk=0), "prefill_chunk must be >= 1"),
        (dict(temperature=-0.5), "temperature must be >= 0"),
        (dict(temperature=1.0, top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(temperature=1.0, top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(temperature=1.0, top_k=0), "top_k must be >= 1"),
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(acceptance="greedy"), "acceptance: unknown rule 'greedy'; allowed: speculative, typical_lossy"),
        (dict(acceptance="typical_lossy", temperature=float("inf")), "temperature must be finite"),
        (dict(max_new_tokens=600), "max_position"),
    ],
)
def test_bad_input_fails_before_compiling(target, drafts, kwargs, message):
    with count_compiles() as compiles, pytest.raises(ValueError, match=message):
        run(target, PROMPTS, drafter=drafts["truncated"], **kwargs)
    assert compiles["n"] == 0


def test_vocabulary_mismatch_is_rejected(target):
    other = drafters.make("draft_model", Model.random(tiny_config(vocab_size=80), seed=1))
    with pytest.raises(ValueError, match="vocab_size 80 differs from target vocab_size 64"):
        run(target, PROMPTS, drafter=other)


def test_unknown_drafter_name(target):
    with pytest.raises(
        ValueError, match="unknown drafter 'medusa9'; allowed: none, bigram, distilled, draft_model, eagle"
    ):
        drafters.make("medusa9", target)


def test_generate_warm_times_a_call_that_did_not_compile(target, drafts, monkeypatch):
    calls = []
    real = generation.generate

    def counting(*args, **kw):
        calls.append(real(*args, **kw))
        return calls[-1]

    monkeypatch.setattr(generation, "generate", counting)
    # max_new_tokens=19: a loop shape no other test compiles, so the first call compiles.
    kw = dict(chat=False, eos_ids=(), max_new_tokens=19, drafter=drafts["truncated"], gamma=2)
    out = generation.generate_warm(target, PROMPTS[:2], **kw)
    assert len(calls) == 2 and calls[0].compile_s > 0 and calls[1].compile_s == 0
    assert out.wall_s == calls[1].wall_s and out.stats == calls[1].stats  # the warm call's timing
    assert out.compile_s == calls[0].compile_s and out.tokens == calls[0].tokens

    calls.clear()
    out = generation.generate_warm(target, PROMPTS[:2], repeats=3, **kw)
    assert len(calls) == 3 and out.compile_s == 0  # already compiled: the first call is warm
    assert out.wall_s == sorted(c.wall_s for c in calls)[1]  # the median call
    assert out.stats == next(c.stats for c in calls if c.wall_s == out.wall_s)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        generation.generate_warm(target, PROMPTS[:2], repeats=0, **kw)


@pytest.mark.parametrize(
    ("prompts", "kwargs", "error", "message"),
    [
        ("hello", {}, TypeError, r"prompts must be a list .* wrap a single prompt in a list"),
        ([[1, 2, 64]], {}, ValueError, r"prompts\[0\]\[2\] must be between 0 and 63, got 64"),
        ([[1, -2]], {}, ValueError, r"prompts\[0\]\[1\] must be between 0 and 63, got -2"),
        ([[1, 2.0]], {}, TypeError, r"prompts\[0\]\[1\] must be an integer, got 2.0"),
        ([[1, 2]], dict(gamma=2.0), TypeError, "gamma must be an integer, got 2.0"),
        ([[1, 2]], dict(max_new_tokens=8.0), TypeError, "max_new_tokens must be an integer"),
        ([[1, 2]], dict(temperature=1.0, top_k=2.5), TypeError, "top_k must be an integer"),
        ([[1, 2]], dict(temperature=float("inf")), ValueError, "temperature must be finite"),
        ([[1, 2]], dict(temperature="hot"), TypeError, "temperature must be a number"),
        ([[1, 2]], dict(seed="abc"), TypeError, "seed must be an integer, got 'abc'"),
        ([[1, 2]], dict(verify_widths=(7,)), ValueError, r"verify_widths\[0\] must be between 1 and 5"),
    ],
)
def test_bad_prompts_and_settings_fail_before_compiling(target, drafts, prompts, kwargs, error, message):
    with count_compiles() as compiles, pytest.raises(error, match=message):
        run(target, prompts, drafter=drafts["truncated"], **{"gamma": 4, **kwargs})
    assert compiles["n"] == 0


def test_compiled_programs_belong_to_the_model(target, drafts):
    """Each model holds its own bounded ProgramCache: nothing is shared through module state."""
    other = Model.random(tiny_config(), seed=0)
    run(target, [[1, 2, 3]], drafter=drafts["truncated"], gamma=2, max_new_tokens=4)
    assert len(other.programs) == 0 and len(target.programs) >= 1
    cache = generation.ProgramCache(max_entries=2)
    small = Model.random(tiny_config(), seed=0, name="small")
    object.__setattr__(small, "programs", cache)
    prompts = [list(range(1, n + 1)) for n in (3, 19, 40)]  # buckets 16, 32, 64: a prefill and a loop each
    for prompt in prompts:
        run(small, [prompt], max_new_tokens=4)
    assert len(cache) == 2 + 2  # the least recently used prefill and loop were dropped
    assert run(small, [prompts[2]], max_new_tokens=4).compile_s == 0.0
    assert run(small, [prompts[0]], max_new_tokens=4).compile_s > 0
    held = set(cache._prefills)
    for new in (2, 3):  # a new budget: a loop of its own, the prefill held
        run(small, [prompts[0]], max_new_tokens=new)
    assert set(cache._prefills) == held and len(cache._loops) == 2


def test_speculative_loops_are_built_with_the_verify_kernels(monkeypatch):
    """On the CPU a speculative loop, and the timing programs of a pass over T >= 2 positions and of
    a speculative loop's one-position pass, are compiled with ``kernels.verify_options`` (with
    SPECDEC_VERIFY_KERNELS=eigen: no YNNPACK fusion left); an autoregressive loop and a decode
    step keep XLA's defaults, as does a speculative loop under SPECDEC_VERIFY_KERNELS=default."""

    def loop_text(drafter_name):
        model = Model.random(tiny_config(), seed=0)  # its own ProgramCache
        drafter = None if drafter_name is None else drafters.make(drafter_name, model)
        run(model, [[1, 2, 3, 4, 1, 2, 3]], drafter=drafter, gamma=3, max_new_tokens=4)
        (loop,) = model.programs._loops.values()
        return loop.as_text()

    monkeypatch.setenv(kernels.ENV, "eigen")
    assert "__ynn_fusion" not in loop_text("ngram")
    assert "__ynn_fusion" in loop_text(None)
    model = Model.random(tiny_config())
    assert "__ynn_fusion" not in timing.step_program(model, 4).as_text()
    assert "__ynn_fusion" not in timing.step_program(model, 1, speculative=True).as_text()
    assert "__ynn_fusion" in timing.step_program(model, 1).as_text()
    monkeypatch.setenv(kernels.ENV, "default")
    assert "__ynn_fusion" in loop_text("ngram")


def test_min_bucket_is_an_argument(target):
    """Padding to a larger bucket compiles another program and changes no token."""
    small = run(target, PROMPTS[:2], max_new_tokens=6)
    large = run(target, PROMPTS[:2], max_new_tokens=6, min_bucket=64)
    assert large.compile_s > 0 and large.tokens == small.tokens


def test_acceptance_rules_are_objects_with_options(target, drafts):
    """A rule object with its options; a class or a rule that is wrong for the sampling is refused."""
    from specdec.acceptance import GreedyMatch, TypicalLossy

    out = run(target, PROMPTS[:2], drafter=drafts["truncated"], gamma=2, acceptance=TypicalLossy(0.05, 0.2))
    assert all(len(t) == 24 for t in out.tokens)
    with count_compiles() as compiles:
        with pytest.raises(TypeError, match="acceptance must be a rule"):
            run(target, PROMPTS, drafter=drafts["truncated"], acceptance=TypicalLossy)
        with pytest.raises(ValueError, match="GreedyMatch is exact only at temperature 0"):
            run(target, PROMPTS, drafter=drafts["truncated"], acceptance=GreedyMatch(), temperature=0.7)
        with pytest.raises(ValueError, match=r"acceptance.epsilon must be a number in \[0, 1\]"):
            TypicalLossy(epsilon=1.5)
    assert compiles["n"] == 0
