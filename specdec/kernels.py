"""Which XLA kernels a program's products run: compiler options per program, not per process.

On XLA:CPU (jax 0.10) a product of one position against a weight is XLA's own matrix-vector
kernel, and a product of T >= 2 positions goes to YNNPACK. On the 2-core development VM YNNPACK
reads the weights at a third of the matrix-vector kernel's rate, so a verify pass cost 2.8 decode
steps; with YNNPACK's kernels off (XLA's Eigen kernels instead) it costs 1.7, while a decode step
is about 13% slower without them (docs/benchmarks.md, "Kernels per program"). So the programs
that verify T >= 2 positions, the speculative decode loops and the timing programs that stand
for them, are compiled with ``verify_options()``; autoregressive loops and prefills keep XLA's
defaults.

``SPECDEC_VERIFY_KERNELS=default`` compiles verifying programs with the defaults too (to measure
the difference); an ``xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` is the user's
choice and is left alone.
"""

from __future__ import annotations

import os

import jax

ENV = "SPECDEC_VERIFY_KERNELS"
CHOICES = ("eigen", "default")
YNN = "xla_cpu_experimental_ynn_fusion_type"


def verify_choice() -> str:
    """``SPECDEC_VERIFY_KERNELS``: "eigen" (the default) or "default"; ValueError naming it otherwise."""
    choice = os.environ.get(ENV, "eigen").strip().lower()
    if choice not in CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(CHOICES)}, got {choice!r}")
    return choice


def verify_options() -> dict[str, str]:
    """XLA compiler options for a program whose target passes score T >= 2 positions: on the CPU
    backend, YNNPACK's fusions off (an empty fusion-type list); elsewhere, or when the user or
    ``SPECDEC_VERIFY_KERNELS=default`` decides, none."""
    if (
        verify_choice() == "default"
        or jax.default_backend() != "cpu"
        or YNN in os.environ.get("XLA_FLAGS", "")
    ):
        return {}
    return {YNN: ""}
