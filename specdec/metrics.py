"""Per-prompt statistics from the loop's counters.

alpha = accepted / drafted: the share of draft tokens the target kept.
mean_gamma = drafted / target_calls: the effective draft length per step.
tau   = new_tokens / target_calls: tokens emitted per target forward pass, *counting*
        the correction or bonus token of every step (so tau >= 1, and tau = 1 for
        autoregressive decoding); Leviathan et al.'s expected E(alpha, gamma).
"""

from __future__ import annotations

import numpy as np


def row_stats(stats, wall_s: float) -> list[dict]:
    """One dict per row: new_tokens, target_calls, drafted, accepted, verified (positions
    the target scored), alpha, tau, mean_gamma, accept_by_position (rate per draft
    position), accepted_hist (steps per accepted length), wall_s and tokens_per_s (the
    batch's wall time, shared by its rows)."""
    s = {k: np.asarray(v) for k, v in vars(stats).items()}
    rows = []
    for b in range(s["new_tokens"].shape[0]):
        calls, drafted = int(s["target_calls"][b]), int(s["drafted"][b])
        new = int(s["new_tokens"][b])
        rows.append(
            dict(
                new_tokens=new,
                target_calls=calls,
                drafted=drafted,
                accepted=int(s["accepted"][b]),
                verified=int(s["verified"][b]),
                alpha=float(s["accepted"][b] / drafted) if drafted else float("nan"),
                tau=new / calls if calls else float("nan"),
                mean_gamma=drafted / calls if calls else float("nan"),
                accept_by_position=(s["accept_by_position"][b] / max(calls, 1)).tolist(),
                accepted_hist=s["accepted_hist"][b].tolist(),
                wall_s=wall_s,
                tokens_per_s=new / wall_s if wall_s > 0 else float("nan"),
            )
        )
    return rows
