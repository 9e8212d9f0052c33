"""Train a drafter for a target with optax: self-distillation data, then a recipe (eagle, distilled).

    python experiments/train_draft.py                          # EAGLE head for SmolLM2 (~3.5 h, 2-core CPU)
    python experiments/train_draft.py train=distilled          # a 2-layer distilled draft
    python experiments/train_draft.py model=tiny train.steps=50 data.prompts=32 train.recipe.vocab=256

The run directory (``run_dir``) collects the corpus, ``checkpoint/``, ``log.jsonl`` and
``curves.png``; an interrupted run resumes from its last checkpoint. Use the result with
``python experiments/run.py drafter=eagle`` or ``specdec.drafters.make("eagle", target, checkpoint=run_dir)``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import conf
import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from specdec import plots
from specdec.train import Corpus, build_corpus, export_head, read_log, train
from specdec.train.data import CATEGORIES


def make_corpus(target, data: DictConfig) -> tuple[Corpus, Corpus]:
    """(training subset of ``data.tokens`` tokens, held-out corpus), built or extended once in
    ``data.dir`` and shared by every run on this target (an interrupted build resumes)."""
    folder = Path(data.dir)
    options = dict(layers=data.layers, response_tokens=data.response_tokens, max_len=data.max_len)
    start = time.perf_counter()
    corpus = build_corpus(
        target, folder / "train", tokens=data.tokens, batch=data.batch, seed=data.seed, **options
    )
    heldout = build_corpus(
        target,
        folder / "heldout",
        shards=len(CATEGORIES),
        batch=data.heldout_batch,
        seed=data.seed + 1,
        **options,
    )
    print(
        f"corpus: {corpus.n_tokens} tokens in {len(corpus)} sequences, held out {heldout.n_tokens} in "
        f"{len(heldout)} ({time.perf_counter() - start:.0f} s) -> {folder}"
    )
    return corpus.subset(data.tokens, data.seed), heldout


def prepare(cfg: DictConfig):
    """(the typed ``train`` config, the target), validated before anything is compiled; a bad
    value raises one of ``conf.USER_ERRORS`` naming its key."""
    train_cfg = conf.typed(cfg).train  # a TrainDraftConfig's TrainConfig
    target = instantiate(cfg.model)
    train_cfg.make_recipe().check(target)
    return train_cfg, target


@hydra.main(config_path="../configs", config_name="train_draft", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        train_cfg, target = prepare(cfg)
    except conf.USER_ERRORS as err:
        print(f"error: {conf.one_line(err)}", file=sys.stderr)
        sys.exit(2)

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    corpus, heldout = make_corpus(target, cfg.data)
    start = time.perf_counter()
    checkpoint = train(target, corpus, heldout, train_cfg, run_dir, resume=cfg.resume)
    plots.save(plots.training_curves(read_log(run_dir)), run_dir, "curves")
    last = [e for e in read_log(run_dir) if "heldout_accept" in e]
    elapsed = time.perf_counter() - start
    print(f"trained {train_cfg.kind}: {train_cfg.steps} steps, {elapsed:.0f} s -> {checkpoint}")
    print(
        f"held-out acceptance (1 - TVD) {last[0]['heldout_accept']:.3f} -> {last[-1]['heldout_accept']:.3f}, "
        f"top-1 agreement {last[0]['heldout_top1']:.3f} -> {last[-1]['heldout_top1']:.3f}"
    )
    print(f"use it: python experiments/run.py drafter={train_cfg.kind} drafter.checkpoint={run_dir}")
    if cfg.export is not None:  # the shipped form, with its agreement on 8 held-out sequences recorded
        sample = heldout.rows(np.unique(np.linspace(0, len(heldout) - 1, min(8, len(heldout))).astype(int)))
        folder = export_head(checkpoint, cfg.export, target, evaluation=sample)
        recorded = json.loads((folder / "drafter.json").read_text())["evaluation"]
        print(f"exported -> {folder} (top-1 {recorded['top1']:.3f} on {len(sample)} held-out sequences)")


if __name__ == "__main__":
    conf.register()
    main()
