"""Run one experiment (or, with -m / sweep=..., a sweep) and record it in the results store.

    python experiments/run.py                                   # ngram on every built-in prompt
    python experiments/run.py drafter=draft_model drafter.gamma=2 task.per_category=1
    python experiments/run.py sweep=default                     # the README's main job
    python experiments/run.py -m drafter=ngram,layer_skip drafter.gamma=1,2,4 sampling=greedy,t07

The configuration is typed (``specdec.config.RunConfig``, registered by ``conf.py``) and fully
validated, the task read and the results store checked writable before the target is loaded.
Each job then measures the autoregressive baseline and the method side by side on every prompt,
appends one row per prompt to ``paths.results_path``, writes ``summary.json`` into its Hydra run
directory, prints a summary table and redraws the figures in ``paths.figures_dir``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# Launcher jobs (submitit: a fresh process, locally or on SLURM) unpickle this script's functions,
# which import conf from this folder: put it on their path.
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])
)

import conf
import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from specdec import experiment, plots, results, sharding
from specdec.files import write_text_atomic


def prepare(cfg: DictConfig) -> experiment.Prepared:
    """Typed config -> the run's objects. Everything that needs no model (types, ranges, the task
    file, sampling, the acceptance rule, a writable results store) is checked first."""
    run_config = conf.typed(cfg)
    questions = instantiate(cfg.task)
    sampling = instantiate(cfg.sampling)
    rule = instantiate(cfg.acceptance)
    results.ResultsStore(run_config.paths.results_path).check_writable()
    d = run_config.distributed
    if d.initialize:  # several processes, one per host: each loads only its own devices' shards
        sharding.initialize_distributed(d.coordinator, d.num_processes, d.process_id)
    target = instantiate(cfg.model)
    experiment.check_context(target, questions, run_config.context)
    drafter = experiment.make_drafter(run_config, target)
    return experiment.Prepared(
        cfg=run_config, questions=questions, target=target, drafter=drafter, sampling=sampling, rule=rule
    )


def print_summary(title: str, summary: dict) -> None:
    print(f"\n{title}")
    columns = (("alpha", "alpha", 6), ("tau", "tau", 6), ("tok/s", "tokens_per_s", 7))
    columns += (("speedup", "speedup", 8), ("decoding", "decode_speedup", 8))
    print(f"{'category':<16} {'prompts':>7} " + " ".join(f"{name:>{w}}" for name, _, w in columns))
    for category, m in summary.items():
        cells = ("-" if m[k] is None else f"{m[k]:.2f}" for _, k, _ in columns)
        print(
            f"{category:<16} {m['prompts']:>7} "
            + " ".join(f"{c:>{w}}" for c, (_, _, w) in zip(cells, columns, strict=True))
        )


@hydra.main(config_path="../configs", config_name="run", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        prepared = prepare(cfg)
    except conf.USER_ERRORS as err:  # bad configuration: one line naming the key, no traceback wall
        print(f"error: {conf.one_line(err)}", file=sys.stderr)
        sys.exit(2)

    run_config = prepared.cfg
    title = experiment.describe(run_config)
    with tqdm(total=len(prepared.questions), desc="prompts", unit="prompt") as bar:

        def progress(done, total, message):
            bar.set_postfix_str(message)
            bar.update(1)

        rows = experiment.run(prepared, progress=progress)

    summary = experiment.summarize(rows)
    print_summary(title, summary)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    write_text_atomic(out_dir / "summary.json", json.dumps({"config": title, "summary": summary}, indent=2))
    paths = run_config.paths
    frame = results.ResultsStore(paths.results_path).to_dataframe()
    written = plots.make_all(frame, paths.figures_dir)
    print(f"\nresults: {paths.results_path} ({len(frame)} rows); summary: {out_dir / 'summary.json'}")
    print(f"figures: {len(written)} files in {paths.figures_dir}")


if __name__ == "__main__":
    conf.register()
    main()
