"""Per-prompt statistics from the loop's counters.

alpha = accepted / (accepted + rejected): the acceptance rate of the draft tokens the target
        judged. A step judges its drafts in order up to the first rejection; later drafts are
        discarded unjudged, so they do not count. This is the maximum-likelihood estimate of
        Leviathan et al.'s alpha (each draft accepted independently with probability alpha),
        so theory.expected_tokens(alpha, gamma) predicts tau. (accepted / drafted is lower:
        about (tau - 1) / gamma.)
mean_gamma = drafted / target_calls: the effective draft length per step.
tau   = new_tokens / target_calls: tokens emitted per target forward pass, *counting*
        the correction or bonus token of every step (so tau >= 1, and tau = 1 for
        autoregressive decoding); Leviathan et al.'s expected E(alpha, gamma).
"""

from __future__ import annotations

import numpy as np


def acceptance_rate(accepted: int, rejected: int) -> float:
    """alpha = accepted / (accepted + rejected); NaN when no draft token was judged."""
    judged = accepted + rejected
    return accepted / judged if judged else float("nan")


def wide_pass_share(verified: int, target_calls: int, gamma: int) -> float:
    """The share of steps that paid a gamma + 1 wide verify pass rather than a decode step, from
    the positions the target scored: verified = calls + gamma (wide passes) when the loop's pass
    widths are 1 and gamma + 1 (its default for a variable-length drafter)."""
    if not target_calls:
        return 0.0
    return min(1.0, max(0.0, (verified - target_calls) / (gamma * target_calls)))


def prediction_shares(stats: dict, gamma: int, variable_length: bool) -> dict:
    """``theory.predicted_speedup``'s drafting_share (drafted / (gamma steps)) and pass_share
    (``wide_pass_share``) from a row's counters, for a variable-length drafter (prompt lookup,
    which drafts only where it finds a match); 1 and 1 for any other drafter."""
    calls = stats["target_calls"]
    if not variable_length or not calls:
        return dict(drafting_share=1.0, pass_share=1.0)
    return dict(
        drafting_share=min(1.0, stats["drafted"] / (gamma * calls)),
        pass_share=wide_pass_share(stats["verified"], calls, gamma),
    )


def row_stats(stats, wall_s: float, prefill_s: float) -> list[dict]:
    """One dict per row: new_tokens, target_calls, drafted, accepted, rejected, verified (positions
    the target scored), alpha, tau, mean_gamma, accept_by_position (rate per draft
    position), accepted_hist (steps per accepted length), accept_by_rank (children tried and
    accepted by depth and sibling rank, [K][R] counts), wall_s, prefill_s (its share spent in
    the prefill) and tokens_per_s (the batch's wall time, shared by its rows)."""
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
                rejected=int(s["rejected"][b]),
                verified=int(s["verified"][b]),
                alpha=acceptance_rate(int(s["accepted"][b]), int(s["rejected"][b])),
                tau=new / calls if calls else float("nan"),
                mean_gamma=drafted / calls if calls else float("nan"),
                accept_by_position=(s["accept_by_position"][b] / max(calls, 1)).tolist(),
                accepted_hist=s["accepted_hist"][b].tolist(),
                accept_by_rank=dict(tried=s["tried"][b].tolist(), accepted=s["hits"][b].tolist()),
                wall_s=wall_s,
                prefill_s=prefill_s,
                tokens_per_s=new / wall_s if wall_s > 0 else float("nan"),
            )
        )
    return rows
