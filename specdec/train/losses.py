"""Distillation objectives between the target's next-token distribution p and the draft's q.

All take logits [..., V] and a weight mask [...] and return the masked mean over positions.
DistillSpec (Zhou et al., 2024) observes that the speculative acceptance rate of a draft
position is 1 - TVD(p, q) (Leviathan et al.), so total variation distance is the direct
objective; forward KL (mode covering) and reverse KL (mode seeking) are its classic proxies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _masked_mean(x, mask):
    mask = mask.astype(jnp.float32)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def forward_kl(p_logits, q_logits, mask):
    """KL(p || q) = sum_v p (log p - log q): cross-entropy to the teacher minus its entropy."""
    log_p, log_q = jax.nn.log_softmax(p_logits, -1), jax.nn.log_softmax(q_logits, -1)
    return _masked_mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), -1), mask)


def reverse_kl(p_logits, q_logits, mask):
    """KL(q || p) = sum_v q (log q - log p)."""
    return forward_kl(q_logits, p_logits, mask)


def total_variation(p_logits, q_logits, mask):
    """TVD(p, q) = 1/2 sum_v |p - q| = 1 - (the acceptance rate of a draft drawn from q)."""
    p, q = jax.nn.softmax(p_logits, -1), jax.nn.softmax(q_logits, -1)
    return _masked_mean(0.5 * jnp.sum(jnp.abs(p - q), -1), mask)


def smooth_l1(prediction, target, mask, beta: float = 1.0):
    """EAGLE's feature regression: Huber-style loss per element, summed over D, mean over positions."""
    d = jnp.abs(prediction.astype(jnp.float32) - target.astype(jnp.float32))
    per = jnp.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)
    return _masked_mean(jnp.mean(per, -1), mask)


DIVERGENCES = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "tvd": total_variation}
