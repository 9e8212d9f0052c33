"""Draw every figure the results store supports (PNG + PDF) and print the written paths.

    python experiments/plot.py                                            # configs/plot.yaml defaults
    python experiments/plot.py paths.results_path=results/results.jsonl paths.figures_dir=figures
    python experiments/plot.py 'verify_latencies={1: 0.021, 2: 0.050, 5: 0.062}'

Figures whose data has a single value along their axis (e.g. one temperature) are skipped
with a logged reason (stderr). A missing or malformed results file is one line on stderr and
exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import conf
import hydra
from omegaconf import DictConfig, OmegaConf

from specdec import plots
from specdec.results import ResultsStore
from specdec.theory import VerifyCost


def load(results_path: str):
    """The results store at ``results_path`` as a DataFrame; FileNotFoundError / ValueError if
    the file is missing, empty or malformed (the message names the file)."""
    path = Path(results_path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    frame = ResultsStore(path).to_dataframe()
    if frame.empty:
        raise ValueError(f"results file has no rows: {path}")
    return frame


@hydra.main(config_path="../configs", config_name="plot", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        frame = load(cfg.paths.results_path)
        latencies = OmegaConf.to_container(cfg.verify_latencies) if cfg.verify_latencies else None
        r = VerifyCost.from_latencies({int(t): float(s) for t, s in latencies.items()}) if latencies else None
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    for path in plots.make_all(frame, cfg.paths.figures_dir, r=r):
        print(path)


if __name__ == "__main__":
    conf.register()
    main()
