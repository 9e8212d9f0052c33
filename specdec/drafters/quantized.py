"""``quantized``: the target's own weights at lower precision draft for it (QSpec-style self-drafts).

The draft is the target with its blocks' linear weights quantized weight-only to int8 or int4
(``specdec.models.quant``); its embedding, final norm and LM head are the target's own arrays,
shared, not copied. It runs as a ``DraftModel`` with its own small KV cache, and the full-precision
target verifies every token, so the output distribution is exactly the target's.

Its acceptance should be high (the draft computes the target's function up to rounding); what it
saves is the bytes of weights read per draft step, which pays where the step is memory-bound and
the platform multiplies quantized weights without first writing a float copy.
"""

from __future__ import annotations

from specdec.drafters.draft_model import DraftModel
from specdec.models import Model
from specdec.models.quant import MODES


def make_quantized(target: Model, *, bits=4, group=None, layers=None, stop_below=None) -> DraftModel:
    """The target quantized to ``bits`` (8 or 4; ``group``: rows per scale, default one per output
    column for 8 and 32 for 4) as its own draft; ``layers``, ``stop_below`` as for draft_model."""
    if isinstance(bits, bool) or bits not in MODES:
        raise ValueError(f"quantized: bits must be 8 or 4, got {bits!r}")
    draft = target.quantize(MODES[bits], group, readout=False)
    return DraftModel.from_model(draft, layers, name="quantized", stop_below=stop_below)
