"""Training drafters: objectives, the self-distillation corpus, the feature plumbing of the loop,
checkpoints and resume, bad configuration, and a tiny end-to-end training run."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import conf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import compose

import specdec
from specdec import drafters
from specdec.drafters import DraftModel
from specdec.models import Model, tiny_config
from specdec.results import ResultsStore
from specdec.train import TrainConfig, losses, read_log, self_distillation_corpus, train, trainer
from specdec.train.data import Corpus, top_features

rng = np.random.default_rng(0)
PROMPTS = [rng.integers(1, 64, size=n).tolist() for n in rng.integers(4, 12, size=72)]
EVAL_PROMPTS = [rng.integers(1, 64, size=8).tolist() for _ in range(16)]


@pytest.fixture(scope="module")
def target():
    return Model.random(tiny_config(n_layers=4), seed=0)


@pytest.fixture(scope="module")
def corpus(target):
    return self_distillation_corpus(
        target, PROMPTS, response_tokens=48, temperature=1.0, chat=False, batch=24
    )


def measured_alpha(target, drafter, temperature) -> float:
    """alpha of generate on held-out prompts (none of them in the training corpus)."""
    out = specdec.generate(
        target, EVAL_PROMPTS, drafter, 4, temperature, chat=False, eos_ids=(), max_new_tokens=48, seed=1
    )
    return float(np.mean([s["alpha"] for s in out.stats]))


# --- objectives -----------------------------------------------------------------------------


def test_divergences_match_hand_computed_values():
    p, q = np.array([0.5, 0.25, 0.25]), np.array([0.25, 0.25, 0.5])
    pl, ql = jnp.log(jnp.asarray(p))[None], jnp.log(jnp.asarray(q))[None]
    one = jnp.ones((1,), bool)
    kl_pq = 0.5 * np.log(2) + 0.25 * np.log(0.5)  # sum p log(p/q) = 0.25 log 2
    assert float(losses.forward_kl(pl, ql, one)) == pytest.approx(kl_pq, abs=1e-6)
    assert float(losses.reverse_kl(pl, ql, one)) == pytest.approx(0.25 * np.log(2), abs=1e-6)
    # TVD = 1/2 (0.25 + 0 + 0.25) = 0.25, and 1 - TVD = sum min(p, q) = the acceptance rate.
    assert float(losses.total_variation(pl, ql, one)) == pytest.approx(0.25, abs=1e-6)
    assert np.minimum(p, q).sum() == pytest.approx(1 - 0.25)
    # The mask averages over chosen positions only.
    both = jnp.concatenate([pl, pl])
    assert float(losses.total_variation(both, jnp.concatenate([ql, pl]), jnp.array([False, True]))) == 0.0
    d = jnp.array([[0.5, 3.0]])
    assert float(losses.smooth_l1(d, jnp.zeros_like(d), one)) == pytest.approx((0.125 + 2.5) / 2)


# --- data -------------------------------------------------------------------------------------


def test_corpus_holds_the_targets_own_continuations_and_top_features(target, corpus, tmp_path):
    assert corpus.tokens.shape[0] == len(PROMPTS)
    greedy = self_distillation_corpus(target, PROMPTS[:3], response_tokens=8, chat=False)
    auto = specdec.generate(target, PROMPTS[:3], chat=False, eos_ids=(), max_new_tokens=8)
    for b in range(3):
        row = greedy.tokens[b][greedy.mask[b]].tolist()
        assert row == PROMPTS[b] + auto.tokens[b]
    # Features are the last layer's output: the final norm + LM head of them give the target's logits.
    ids = jnp.asarray(greedy.tokens)
    logits, _, _ = target.apply(
        target.params,
        ids,
        jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape),
        target.init_cache(3, ids.shape[1]),
    )
    readout = drafters.eagle.target_readout(target)
    again = drafters.eagle.readout_logits(
        jnp.asarray(greedy.features), readout["norm"], readout["head"], 1e-5
    )
    np.testing.assert_allclose(np.asarray(again), np.asarray(logits), atol=1e-4)
    corpus.save(tmp_path / "c.safetensors")
    loaded = Corpus.load(tmp_path / "c.safetensors")
    assert np.array_equal(loaded.tokens, corpus.tokens) and np.array_equal(loaded.mask, corpus.mask)
    np.testing.assert_array_equal(loaded.features, corpus.features)
    train_part, held = corpus.split(8)
    assert len(train_part) == len(PROMPTS) - 8 and len(held) == 8


# --- the loop hands feature drafters the target's hidden states --------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FeatureProbe:
    """The target drafting for itself (every draft accepted), recording the hidden states the loop
    hands it in ``init`` and ``commit`` (test-only, through a host callback)."""

    inner: DraftModel
    name = "probe"
    variable_length = False
    needs_features = True

    @property
    def vocab_size(self):
        return self.inner.vocab_size

    def init(self, context, hidden):
        record = lambda *a: SEEN.append([np.asarray(x) for x in a])
        start = jnp.zeros_like(context.lengths)
        jax.debug.callback(record, hidden, start, context.lengths - 2)  # positions < lengths - 1 valid
        return self.inner.init(context, None)

    def propose(self, state, context, gamma, key):
        return self.inner.propose(state, context, gamma, key)

    def commit(self, state, verified):
        record = lambda *a: SEEN.append([np.asarray(x) for x in a])
        jax.debug.callback(record, verified.hidden, verified.start, verified.start + verified.n_accepted)
        return self.inner.commit(state, verified)


SEEN = []


def test_loop_gives_drafters_the_top_hidden_states_of_verified_positions(target):
    """init gets the prefill's hidden states, every commit those of the verified positions (the
    previous pending token and the accepted drafts): equal to a plain forward over the output."""
    SEEN.clear()
    out = specdec.generate(
        target,
        PROMPTS[:3],
        drafter=FeatureProbe(DraftModel.from_model(target)),
        gamma=2,
        chat=False,
        eos_ids=(),
        max_new_tokens=12,
    )
    sequences = [prompt + new for prompt, new in zip(out.prompt_tokens, out.tokens, strict=True)]
    truths = [top_features(target, np.asarray(seq)[None])[0] for seq in sequences]  # [len, D] each
    checked, longest = 0, 0
    for hidden, start, last in SEEN:  # callbacks may arrive in any order
        verify = hidden.shape[1] == 3  # a verify pass (gamma + 1 positions), not the prefill
        for b in range(3):
            valid = [i for i in range(hidden.shape[1]) if start[b] + i <= min(last[b], len(sequences[b]) - 1)]
            assert valid, "at least the first position is always verified"
            longest = max(longest, len(valid)) if verify else longest
            for i in valid:
                np.testing.assert_allclose(hidden[b, i], truths[b][start[b] + i], atol=1e-4)
                checked += 1
    assert len(SEEN) == 1 + 4  # the prefill, then 4 steps of 3 tokens
    assert longest == 3  # whole windows (pending + 2 accepted drafts) were checked
    assert checked > len(SEEN) * 3 and all(s["new_tokens"] == 12 for s in out.stats)


# --- training ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "recipe"), [("distilled", {"layers": [0]}), ("eagle", {}), ("eagle", {"vocab": 40})]
)
def test_training_raises_the_measured_acceptance_rate(target, corpus, kind, recipe, tmp_path):
    train_part, held = corpus.split(8)
    cfg = TrainConfig(kind=kind, recipe=recipe, steps=200, learning_rate=3e-3, eval_every=100)
    folder = train(target, train_part, held, cfg, tmp_path, progress=False)
    untrained = drafters.make(kind, target, checkpoint="untrained")
    trained = drafters.make(kind, target, checkpoint=tmp_path)
    # Measured here: greedy 0.24 -> 0.29 (distilled), 0.02 -> 0.29 (eagle), 0.02 -> 0.28 (eagle, vocab 40);
    # at T = 1: 0.71 -> 0.82, 0.48 -> 0.77, 0.48 -> 0.63.
    for temperature, gain in ((0.0, 0.04), (1.0, 0.1)):
        before, after = (measured_alpha(target, d, temperature) for d in (untrained, trained))
        assert after > before + gain, (temperature, before, after)
    curve = [e["heldout_accept"] for e in read_log(tmp_path) if "heldout_accept" in e]
    assert len(curve) == 3 and curve[-1] > curve[0] + 0.05
    assert (tmp_path / "checkpoint" / "weights.safetensors").is_file() and folder == tmp_path / "checkpoint"
    auto = specdec.generate(target, EVAL_PROMPTS, chat=False, eos_ids=(), max_new_tokens=48)
    spec = specdec.generate(target, EVAL_PROMPTS, trained, 4, chat=False, eos_ids=(), max_new_tokens=48)
    assert spec.tokens == auto.tokens
    if "vocab" in recipe:  # drafts only the 40 most frequent corpus tokens
        frequent = set(np.argsort(-trainer.token_counts(train_part, 64), kind="stable")[:40].tolist())
        assert set(np.asarray(trained.vocab_ids).tolist()) == frequent
        logits = np.asarray(trained.logits(jax.random.normal(jax.random.key(0), (3, 32))))  # [3, V]
        outside = np.setdiff1d(np.arange(64), sorted(frequent))
        assert np.isneginf(logits[:, outside]).all() and np.isfinite(logits[:, sorted(frequent)]).all()
    assert json.loads((folder / "drafter.json").read_text())["step"] == 200


def test_interrupted_training_resumes_to_the_same_weights(target, corpus, tmp_path, monkeypatch):
    train_part, held = corpus.split(8)
    cfg = TrainConfig(kind="eagle", steps=12, warmup_steps=2, checkpoint_every=5, eval_every=6, log_every=2)
    train(target, train_part, held, cfg, tmp_path / "whole", progress=False)

    real = trainer.batch_indices

    def dies_at_step_8(n, batch_size, step, seed):
        if step == 8:
            raise KeyboardInterrupt
        return real(n, batch_size, step, seed)

    monkeypatch.setattr(trainer, "batch_indices", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        train(target, train_part, held, cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(trainer, "batch_indices", real)
    assert json.loads((tmp_path / "cut/checkpoint/drafter.json").read_text())["step"] == 5
    train(target, train_part, held, cfg, tmp_path / "cut", progress=False)

    whole = trainer.read_checkpoint(tmp_path / "whole", target)[4]
    cut = trainer.read_checkpoint(tmp_path / "cut", target)[4]
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(cut), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    steps = [e["step"] for e in read_log(tmp_path / "cut") if "loss" in e]
    assert steps == [2, 4, 6, 8, 10, 12]  # no duplicated or missing log entries
    with pytest.raises(ValueError, match="another training config"):
        train(target, train_part, held, dataclasses.replace(cfg, steps=20), tmp_path / "cut", progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(kind="medusa"), "train.kind must be one of distilled, eagle"),
        (dict(kind="eagle", recipe={"layers": [0]}), "unknown option 'layers' for eagle"),
        (dict(kind="distilled", recipe={"divergence": "js"}), "divergence must be one of"),
        (dict(steps=0), "train.steps must be >= 1"),
        (dict(learning_rate=0.0), "learning_rate must be > 0"),
        (dict(steps=10, warmup_steps=10), "warmup_steps must be in"),
    ],
)
def test_bad_training_config_is_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_bad_checkpoints_are_named(target, corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="no drafter checkpoint"):
        drafters.make("eagle", target, checkpoint=tmp_path / "nothing")
    train_part, held = corpus.split(8)
    train(
        target, train_part, held, TrainConfig(kind="eagle", steps=2, warmup_steps=0), tmp_path, progress=False
    )
    with pytest.raises(ValueError, match="holds eagle weights, not distilled"):
        drafters.make("distilled", target, checkpoint=tmp_path)
    other = Model.random(tiny_config(vocab_size=80), seed=1)
    with pytest.raises(ValueError, match="trained for a target with vocab_size 64"):
        drafters.make("eagle", other, checkpoint=tmp_path)


# --- Hydra: configs/train/, experiments/train_draft.py, then run.py by name -------------------

ROOT = Path(__file__).resolve().parents[1]


def script(name, *overrides, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / name), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=dict(os.environ, HYDRA_FULL_ERROR="0"),
        timeout=900,
    )


@pytest.mark.parametrize("option", ["eagle", "distilled"])
def test_train_configs_compose(option):
    cfg = conf.typed(compose("train_draft", [f"train={option}"]))
    run = conf.typed(compose("run", [f"drafter={option}"]))
    assert isinstance(cfg.train, TrainConfig) and cfg.train.kind == option
    # The drafter config finds what train_draft.py writes by default.
    assert cfg.run_dir == run.drafter.checkpoint == f"checkpoints/{option}-smollm2-135m-instruct"


@pytest.mark.slow
def test_train_draft_makes_a_drafter_that_run_py_uses_by_name(tmp_path):
    trained = script(
        "train_draft.py",
        "model=tiny",
        "train.steps=20",
        "train.warmup_steps=2",
        "train.eval_every=10",
        "train.recipe.vocab=256",
        "data.prompts=12",
        "data.heldout=2",
        "data.prompt_tokens=8",
        "data.response_tokens=16",
        f"run_dir={tmp_path}/eagle",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "held-out acceptance" in trained.stdout
    assert (tmp_path / "eagle/curves.png").is_file() and (tmp_path / "eagle/corpus.safetensors").is_file()
    assert [e["step"] for e in read_log(tmp_path / "eagle") if "heldout_accept" in e] == [0, 10, 20]
    measured = script(
        "run.py",
        "model=tiny",
        "drafter=eagle",
        f"drafter.checkpoint={tmp_path}/eagle",
        "task.per_category=1",
        "task.categories=[qa]",
        "max_new_tokens=8",
        f"paths.results_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert measured.returncode == 0, measured.stderr[-3000:]
    rows = [r for r in ResultsStore(tmp_path / "results.jsonl").rows() if r["drafter"] == "eagle"]
    assert len(rows) == 1 and rows[0]["tau"] >= 1.0 and rows[0]["target_calls"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.steps=0"], "error: train.steps must be >= 1"),
        (["+train.recipe.divergence=js"], "error: train.recipe: unknown option 'divergence' for eagle"),
        (["data.heldout=0"], "error: data.heldout must be between 1"),
        (["train=medusa"], "Could not find 'train/medusa'"),
        (["train.steps=2.5"], "train.steps"),
        (["+train.epochs=3"], "error: train.epochs: unknown key"),
        ([], "error: train.recipe.vocab must be between 1 and 512, got 8192"),  # tiny's vocabulary
    ],
)
def test_train_draft_bad_configuration_is_one_clear_line(tmp_path, overrides, message):
    proc = script("train_draft.py", "model=tiny", f"run_dir={tmp_path}/run", *overrides, cwd=tmp_path)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoint").exists()
