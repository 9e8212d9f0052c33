"""Run one experiment (or, with -m / sweep=..., a sweep) and record it in the results store.

    python experiments/run.py                                   # ngram on every built-in prompt
    python experiments/run.py drafter=draft_model drafter.gamma=2 task.per_category=1
    python experiments/run.py sweep=default                     # the README's main job
    python experiments/run.py -m drafter=ngram,layer_skip drafter.gamma=1,2,4 sampling=greedy,t07

Each job loads the target once, measures the autoregressive baseline and the method side by
side on every prompt, appends one row per prompt to ``results_path``, writes ``summary.json``
into its Hydra run directory, prints a summary table and redraws the figures in ``figures_dir``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from specdec import experiment, plots, results


def to_run_config(cfg: DictConfig) -> experiment.RunConfig:
    """The Hydra config as the library's frozen dataclasses (which validate it)."""
    return experiment.RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))


def print_summary(title: str, summary: dict) -> None:
    print(f"\n{title}")
    print(f"{'category':<16} {'prompts':>7} {'alpha':>6} {'tau':>6} {'tok/s':>7} {'speedup':>8}")
    for category, m in summary.items():
        cells = [
            f"{m[k]:.2f}" if m[k] is not None else "-" for k in ("alpha", "tau", "tokens_per_s", "speedup")
        ]
        print(f"{category:<16} {m['prompts']:>7} {cells[0]:>6} {cells[1]:>6} {cells[2]:>7} {cells[3]:>8}")


@hydra.main(config_path="../configs", config_name="run", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        run_config = to_run_config(cfg)
        prepared = experiment.prepare(run_config)
    except (ValueError, FileNotFoundError, OmegaConfBaseException) as err:
        # Bad configuration: one line naming the key and what is allowed, no traceback wall.
        key = getattr(err, "full_key", None)
        print(f"error: {str(err).splitlines()[0]}" + (f" (key: {key})" if key else ""), file=sys.stderr)
        sys.exit(2)

    title = experiment.describe(run_config)
    with tqdm(total=len(prepared.questions), desc="prompts", unit="prompt") as bar:

        def progress(done, total, message):
            bar.set_postfix_str(message)
            bar.update(1)

        rows = experiment.run(prepared, progress=progress)

    summary = experiment.summarize(rows)
    print_summary(title, summary)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    (out_dir / "summary.json").write_text(json.dumps({"config": title, "summary": summary}, indent=2))
    frame = results.ResultsStore(run_config.results_path).to_dataframe()
    written = plots.make_all(frame, cfg.figures_dir)
    print(f"\nresults: {run_config.results_path} ({len(frame)} rows); summary: {out_dir / 'summary.json'}")
    print(f"figures: {len(written)} files in {cfg.figures_dir}")


if __name__ == "__main__":
    main()
