"""Every drafter in the compiled loop: greedy losslessness, sampling losslessness, its own logic."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sampling_distribution import PASS, _pvalue

import specdec
from specdec import drafters
from specdec.drafters import Context, NGram
from specdec.drafters.eagle import Eagle, readout_logits
from specdec.drafters.layer_skip import match_rate, save_skip_set, search_skip_set
from specdec.generation import default_verify_widths
from specdec.models import Model, tiny_config
from specdec.sampling import Sampling, probs

PROMPTS = [[3, 7, 1, 5, 3, 7, 2, 9], [4, 4, 4], [1, 2, 3, 4, 5, 6, 1, 2, 3, 9, 8, 7, 1, 2], [6, 5]]

# name -> (drafter name, options, generate options)
DRAFTERS = {
    "ngram": ("ngram", dict(max_ngram=3), {}),
    "unigram": ("unigram", {}, {}),
    "bigram": ("bigram", dict(corpus=[[1, 2, 3, 1, 2]]), {}),
    "layer_skip": ("layer_skip", dict(skip=[1, 2]), {}),
    "draft_model_adaptive": ("draft_model", dict(layers=2), dict(schedule="heuristic")),
    "draft_model_stop_below": ("draft_model", dict(layers=2, stop_below=0.3), dict(verify_widths=(1, 2))),
    "quantized_int4": ("quantized", dict(bits=4), {}),
    "quantized_int8": ("quantized", dict(bits=8, layers=3), {}),
    "eagle": ("eagle", dict(checkpoint="untrained"), {}),
    "distilled": ("distilled", dict(checkpoint="untrained"), {}),
}


@pytest.fixture(scope="module")
def target():
    return Model.random(tiny_config(n_layers=4), seed=0)


def run(target, prompts, drafter=None, **kw):
    kw.setdefault("max_new_tokens", 20)
    return specdec.generate(target, prompts, drafter=drafter, chat=False, eos_ids=(), **kw)


@pytest.mark.parametrize("gamma", [4])  # gamma 1, 3, 5 are covered for the loop itself in test_decode
@pytest.mark.parametrize("name", list(DRAFTERS))
def test_greedy_output_equals_autoregressive(target, name, gamma):
    kind, options, extra = DRAFTERS[name]
    drafter = drafters.make(kind, target, **options)
    auto = run(target, PROMPTS)
    spec = run(target, PROMPTS, drafter, gamma=gamma, **extra)
    assert spec.tokens == auto.tokens
    one = run(target, PROMPTS[2:3], drafter, gamma=gamma, **extra)
    assert one.tokens[0] == auto.tokens[2]
    for s in spec.stats:
        assert 0 <= s["accepted"] <= s["drafted"] <= gamma * s["target_calls"]
        assert s["target_calls"] <= s["verified"] <= (gamma + 1) * s["target_calls"]


DIST_PROMPT = [3, 7, 1, 5, 3, 7]  # repeats, so prompt lookup finds matches
VOCAB = 12
N_ROWS = 4000


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_sampling_reproduces_the_target_distribution(name):
    """First token and second token (given the commonest first) ~ the target, at temperature 1."""
    target = Model.random(tiny_config(vocab_size=VOCAB, n_layers=4), seed=0)
    kind, options, extra = DRAFTERS[name]
    drafter = drafters.make(kind, target, **options)
    out = run(
        target, [DIST_PROMPT] * N_ROWS, drafter, gamma=3, max_new_tokens=2, temperature=1.0, seed=5, **extra
    )
    tokens = np.asarray(out.tokens)  # [N_ROWS, 2]
    assert sum(s["accepted"] for s in out.stats) > 0.05 * N_ROWS  # drafts are really used
    # Exact target distributions, from one uncached forward pass.
    ids = jnp.asarray([[*DIST_PROMPT, a] for a in range(VOCAB)])
    logits, _, _ = target.apply(
        target.params, ids, jnp.broadcast_to(jnp.arange(7), ids.shape), target.init_cache(VOCAB, 8)
    )
    p = np.asarray(probs(logits, Sampling(1.0)), np.float64)
    first = int(np.bincount(tokens[:, 0], minlength=VOCAB).argmax())
    assert _pvalue(tokens[:, 0], p[0, -2]) > PASS
    assert _pvalue(tokens[tokens[:, 0] == first, 1], p[first, -1]) > PASS


def test_ngram_proposes_the_continuation_of_the_latest_match():
    ngram = NGram(vocab_size=20, max_ngram=3, min_ngram=1)
    tokens = np.zeros((4, 16), np.int32)
    tokens[0, :9] = [1, 2, 3, 4, 5, 9, 2, 3, 4]  # "2 3 4" seen at 1 -> 5 9 2
    tokens[1, :5] = [7, 8, 9, 10, 11]  # no earlier occurrence of anything: nothing drafted
    tokens[2, :6] = [5, 6, 5, 6, 7, 6]  # only the 1-gram "6" recurs, latest at 3 -> 7 6 (then unknown)
    tokens[3, :7] = [1, 2, 9, 1, 2, 8, 2]  # "8 2" unseen, "2" latest at 4 -> 8 2 (then unknown)
    context = Context(
        tokens=jnp.asarray(tokens),
        lengths=jnp.array([9, 5, 6, 7]),
        budget=jnp.full(4, 3),
        sampling=Sampling(),
        prompt_len=16,
    )
    draft, q, _ = ngram.propose(ngram.init(context, None), context, 3, None)
    drafted = np.asarray(q.sum(-1)) > 0
    assert draft[0].tolist() == [5, 9, 2] and drafted[0].tolist() == [True] * 3
    assert drafted[1].tolist() == [False] * 3
    assert draft[2, :2].tolist() == [7, 6] and drafted[2].tolist() == [True, True, False]
    assert draft[3, :2].tolist() == [8, 2] and drafted[3].tolist() == [True, True, False]
    assert np.allclose(np.asarray(q)[drafted].max(-1), 1.0)  # one-hot


def test_no_match_costs_single_position_passes(target):
    """On the CPU backend (the default widths there: 1 and gamma + 1)."""
    ngram = drafters.make("ngram", target)
    out = run(target, [[1, 2, 3, 4, 5, 6, 7, 8]], ngram, gamma=4, max_new_tokens=1)
    s = out.stats[0]
    assert s["drafted"] == 0 and s["verified"] == s["target_calls"] == 1


def test_default_verify_widths_add_the_narrow_pass_on_cpu_only(target):
    """A step that may draft nothing gets a width-1 branch on the CPU backend; elsewhere one width
    (on a GPU the switch costs more than the narrow pass saves)."""
    ngram = drafters.make("ngram", target)
    fixed = drafters.make("draft_model", target, layers=2)
    assert default_verify_widths(ngram, 4, None, "cpu") == (1,)
    assert default_verify_widths(fixed, 4, "heuristic", "cpu") == (1,)
    assert default_verify_widths(ngram, 4, None, "gpu") == ()
    assert default_verify_widths(fixed, 4, "heuristic", "tpu") == ()
    assert default_verify_widths(fixed, 4, None, "cpu") == ()
    assert default_verify_widths(None, 0, None, "cpu") == ()


def test_heuristic_schedule_shrinks_after_rejections(target):
    useless = drafters.make("draft_model", Model.random(tiny_config(n_layers=4), seed=9))
    fixed = run(target, PROMPTS, useless, gamma=5, max_new_tokens=30)
    adaptive = run(target, PROMPTS, useless, gamma=5, max_new_tokens=30, schedule="heuristic")
    assert all(s["mean_gamma"] == 5 for s in fixed.stats)
    assert all(s["mean_gamma"] < 2 for s in adaptive.stats)
    perfect = drafters.make("draft_model", target)
    grown = run(target, PROMPTS, perfect, gamma=5, max_new_tokens=30, schedule="heuristic")
    assert all(s["mean_gamma"] > 4 for s in grown.stats)


def test_confidence_threshold_stops_drafting(target):
    always = run(target, PROMPTS, drafters.make("draft_model", target, layers=2), gamma=4)
    picky = run(target, PROMPTS, drafters.make("draft_model", target, layers=2, stop_below=0.2), gamma=4)
    never = run(target, PROMPTS, drafters.make("draft_model", target, layers=2, stop_below=0.999), gamma=4)
    assert sum(s["drafted"] for s in picky.stats) < sum(s["drafted"] for s in always.stats)
    assert all(s["drafted"] == 0 and s["verified"] == s["target_calls"] for s in never.stats)


def test_layer_skip_search_finds_a_set_that_the_drafter_loads(target, tmp_path):
    auto = run(target, PROMPTS[:2], max_new_tokens=16)
    sequences = np.array([p[:3] + t for p, t in zip(PROMPTS[:2], auto.tokens, strict=True)])
    n_prompt = np.array([3, 3])
    assert match_rate(target, sequences, n_prompt, np.ones(4, bool)) == 1.0
    skip, rates = search_skip_set(target, sequences, n_prompt, n_skip=2)
    assert len(skip) == 2 and 0 not in skip and rates[0] >= rates[1]
    # The greedy choice is the best single layer to drop.
    singles = {i: match_rate(target, sequences, n_prompt, np.arange(4) != i) for i in (1, 2, 3)}
    assert rates[0] == max(singles.values())
    path = save_skip_set(tmp_path / "skip.json", skip, target_name="tiny", rates=rates)
    drafter = drafters.make("layer_skip", target, skip_file=path)
    assert drafter.layers == tuple(i for i in range(4) if i not in skip)
    assert drafter.name == "layer_skip"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(), "exactly one of"),
        (dict(skip=[1], first=2), "exactly one of"),
        (dict(skip=[0, 1, 2, 3]), "proper subset"),
        (dict(skip=[7]), "proper subset"),
        (dict(first=0), "first must be between 1 and 4"),
        (dict(skip_file="missing.json"), "does not exist"),
    ],
)
def test_layer_skip_bad_options(target, options, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        drafters.make("layer_skip", target, **options)


def test_bad_drafter_options(target):
    with pytest.raises(ValueError, match="min_ngram <= max_ngram"):
        drafters.make("ngram", target, max_ngram=1, min_ngram=2)
    with pytest.raises(ValueError, match="stop_below must be in"):
        drafters.make("draft_model", target, stop_below=1.5)
    with pytest.raises(ValueError, match="schedule must be one of"):
        run(target, PROMPTS, drafters.make("ngram", target), schedule="fast")
    with pytest.raises(ValueError, match=r"verify_widths\[0\] must be between 1 and 3"):
        run(target, PROMPTS, drafters.make("ngram", target), gamma=2, verify_widths=(5,))


@pytest.mark.parametrize(
    ("name", "options", "error", "message"),
    [
        ("layer_skip", dict(skip=[1.9]), TypeError, r"layer_skip: skip\[0\] must be an integer, got 1.9"),
        ("layer_skip", dict(first=2.0), TypeError, "layer_skip: first must be an integer"),
        ("draft_model", dict(layers=(99,)), ValueError, r"draft_model: layers\[0\] must be between 0 and 3"),
        ("draft_model", dict(layers=(0, 0)), ValueError, "draft_model: layers must be distinct"),
        ("draft_model", dict(layers=2.5), TypeError, r"draft_model: layers must be a list of integers"),
        ("draft_model", dict(stop_below="high"), TypeError, "draft_model: stop_below must be a number"),
        ("ngram", dict(max_ngram=2.0), TypeError, "ngram: max_ngram must be an integer"),
    ],
)
def test_drafter_options_are_type_checked(target, name, options, error, message):
    with pytest.raises(error, match=message):
        drafters.make(name, target, **options)


def test_corrupt_skip_file_is_named(target, tmp_path):
    path = tmp_path / "skip.json"
    path.write_text('{"skip": [1, 2')
    with pytest.raises(ValueError, match=f"layer_skip: skip_file {path} is not a skip set"):
        drafters.make("layer_skip", target, skip_file=str(path))


def test_eagle_vocabulary_subset_spreads_its_logits_without_a_batch_scatter():
    """A head drafting over a vocabulary subset gives the subset's logits at their ids and -inf
    elsewhere, spread by a gather: a scatter into the [B, V] logits ran 300 ms a step on XLA:CPU
    at batch 4 (0.7 ms at batch 1), making EAGLE's c 2.5 instead of 0.06."""
    target = Model.random(tiny_config(vocab_size=97), seed=0)
    ids = np.array([3, 5, 50, 96])
    head = Eagle.random(target, vocab_ids=ids)
    h = jax.random.normal(jax.random.key(1), (4, target.config.dim))
    got = np.asarray(head.logits(h))
    want = np.asarray(readout_logits(h, head.norm, head.head, target.config.norm_eps))  # [4, 4]
    np.testing.assert_array_equal(got[:, ids], want)
    assert np.all(np.isneginf(np.delete(got, ids, axis=1)))
    text = jax.jit(head.logits).lower(h).compile().as_text()
    assert not re.search(r"= f32\[4,97\]\S* scatter\(", text)
