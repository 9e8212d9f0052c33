"""Held-out agreement of EAGLE-1 and EAGLE-3 heads against the amount of training data.

For every recipe (``--recipes``: train group options) and token count (``--tokens``), one
``experiments/train_draft.py`` run on that many tokens of the shared corpus (a subset of whole
sequences of one shuffle; the corpus is built or extended first when it holds fewer), with
the same steps and batch for every run; then the last held-out teacher-forced top-1 and
1 - TVD of each run (the same held-out shards for all), over every held-out token and over the
answers' tokens alone (the positions a drafter drafts; evaluated from the run's checkpoint when
its log predates them), as a table and a figure (``plots.agreement_vs_data``). Runs already
finished in ``--out`` are read, not repeated.

    python experiments/eagle_data_size.py --tokens 25000 100000 500000 --steps 700 --out results/eagle_data
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from specdec import plots
from specdec.files import write_text_atomic
from specdec.train import Corpus, read_log, trainer
from specdec.train.data import answer_marker


def answer_agreement(run_dir: Path, loaded: dict) -> dict:
    """{"answer_top1", "answer_accept"} of the run's last checkpoint on the held-out answers of the
    corpus its recorded config names; ``loaded`` keeps the target and those answers between runs."""
    cfg = OmegaConf.load(run_dir / "hydra" / ".hydra" / "config.yaml")
    key = (cfg.model.name, cfg.data.dir)
    if loaded.get("key") != key:
        target = instantiate(cfg.model)
        heldout = Corpus.load(Path(cfg.data.dir) / "heldout")
        loaded.update(key=key, target=target, answers=heldout.answers(answer_marker(target)))
    _, _, recipe, *weights = trainer.read_checkpoint(run_dir, loaded["target"])
    got = trainer.evaluate(loaded["target"], recipe, weights, loaded["answers"])
    return {"answer_top1": got["top1"], "answer_accept": got["accept"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["eagle1", "eagle"])
    parser.add_argument("--tokens", type=int, nargs="+", default=[25_000, 100_000, 500_000])
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--out", default="results/eagle_data")
    parser.add_argument(
        "overrides", nargs="*", help="more train_draft.py overrides (model=..., data.dir=...)"
    )
    args = parser.parse_args()

    out = Path(args.out)
    records, loaded = [], {}
    for recipe in args.recipes:
        for tokens in args.tokens:
            run_dir = out / f"{recipe}-{tokens}"
            log = read_log(run_dir)
            if not any(e.get("step") == args.steps and "heldout_top1" in e for e in log):
                overrides = [f"train={recipe}", f"data.tokens={tokens}", f"train.steps={args.steps}"]
                overrides += [f"train.eval_every={args.steps}", f"run_dir={run_dir}", *args.overrides]
                script = Path(__file__).with_name("train_draft.py")
                subprocess.run([sys.executable, str(script), *overrides], check=True)
                log = read_log(run_dir)
            last = [e for e in log if "heldout_top1" in e][-1]
            record = dict(
                recipe=recipe, tokens=tokens, top1=last["heldout_top1"], accept=last["heldout_accept"]
            )
            if "heldout_answer_top1" in last:
                record.update(
                    answer_top1=last["heldout_answer_top1"], answer_accept=last["heldout_answer_accept"]
                )
            else:
                record.update(answer_agreement(run_dir, loaded))
            records.append(record)
            top1 = (record["top1"], record["answer_top1"])
            print(f"{recipe} on {tokens} tokens: top-1 {top1[0]:.3f}, on answers {top1[1]:.3f}", flush=True)
    write_text_atomic(out / "records.json", json.dumps(records, indent=1))
    print(
        "\n| recipe | training tokens | held-out top-1 | held-out 1 - TVD | answers: top-1 | answers: 1 - TVD"
        " |\n|---|---:|---:|---:|---:|---:|"
    )
    for r in records:
        print(
            f"| {r['recipe']} | {r['tokens']} | {r['top1']:.3f} | {r['accept']:.3f} | "
            f"{r['answer_top1']:.3f} | {r['answer_accept']:.3f} |"
        )
    for path in plots.save(plots.agreement_vs_data(records), out, "eagle_data_size"):
        print(f"figure: {path}")


if __name__ == "__main__":
    main()
