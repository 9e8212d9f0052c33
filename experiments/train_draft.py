"""Train a drafter for a target with optax: self-distillation data, then a recipe (eagle, distilled).

    python experiments/train_draft.py                          # EAGLE head for SmolLM2 (~30 min, 2-core CPU)
    python experiments/train_draft.py train=distilled          # a 2-layer distilled draft
    python experiments/train_draft.py model=tiny train.steps=50 data.prompts=32 train.recipe.vocab=256

The run directory (``run_dir``) collects the corpus, ``checkpoint/``, ``log.jsonl`` and
``curves.png``; an interrupted run resumes from its last checkpoint. Use the result with
``python experiments/run.py drafter=eagle`` or ``specdec.drafters.make("eagle", target, checkpoint=run_dir)``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import conf
import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from specdec import plots
from specdec.train import Corpus, read_log, sample_prompts, self_distillation_corpus, train


def make_corpus(target, data: DictConfig, path: Path) -> Corpus:
    """The run's self-distillation corpus, made once and kept next to the checkpoint."""
    if path.is_file():
        return Corpus.load(path)
    start = time.perf_counter()
    prompts = sample_prompts(
        target, data.prompts, max_tokens=data.prompt_tokens, seed=data.seed, progress=True
    )
    corpus = self_distillation_corpus(
        target,
        prompts,
        response_tokens=data.response_tokens,
        temperature=data.temperature,
        seed=data.seed,
        progress=True,
    )
    corpus.save(path)
    print(
        f"corpus: {corpus.tokens.shape[0]} sequences x {corpus.tokens.shape[1]} tokens "
        f"in {time.perf_counter() - start:.0f} s -> {path}"
    )
    return corpus


@hydra.main(config_path="../configs", config_name="train_draft", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        train_cfg = conf.typed(cfg).train  # a TrainDraftConfig
        target = instantiate(cfg.model)
        train_cfg.make_recipe().check(target)
    except conf.USER_ERRORS as err:
        print(f"error: {conf.one_line(err)}", file=sys.stderr)
        sys.exit(2)

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    corpus, heldout = make_corpus(target, cfg.data, run_dir / "corpus.safetensors").split(cfg.data.heldout)
    start = time.perf_counter()
    checkpoint = train(target, corpus, heldout, train_cfg, run_dir, resume=cfg.resume)
    plots.training_curves(read_log(run_dir), run_dir / "curves")
    last = [e for e in read_log(run_dir) if "heldout_accept" in e]
    elapsed = time.perf_counter() - start
    print(f"trained {train_cfg.kind}: {train_cfg.steps} steps, {elapsed:.0f} s -> {checkpoint}")
    print(
        f"held-out acceptance (1 - TVD) {last[0]['heldout_accept']:.3f} -> {last[-1]['heldout_accept']:.3f}, "
        f"top-1 agreement {last[0]['heldout_top1']:.3f} -> {last[-1]['heldout_top1']:.3f}"
    )
    print(f"use it: python experiments/run.py drafter={train_cfg.kind} drafter.checkpoint={run_dir}")


if __name__ == "__main__":
    conf.register()
    main()
