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
