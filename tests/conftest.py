"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (~93 MB), fetched into the specdec cache on first use.

    Set ``SPECDEC_CACHE`` to reuse a cache directory between runs.
    """
    from specdec.weights import zoo

    return zoo.fetch_gguf("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    """Our float32 SmolLM2-135M-Instruct (``specdec.Model``), loaded once per test session."""
    import specdec

    return specdec.load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf):
    """transformers' ``LlamaForCausalLM`` on the same GGUF, float32, in eval mode: the reference."""
    import torch
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    )
    return model.eval()
