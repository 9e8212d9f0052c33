"""specdec: speculative decoding research on JAX."""

from specdec import compile_cache

compile_cache.enable()  # before anything compiles: JAX decides once per process

from specdec import drafters  # noqa: E402
from specdec.generation import GenerationOutput, generate  # noqa: E402
from specdec.models import Model, ModelConfig  # noqa: E402
from specdec.weights import load_model  # noqa: E402

__all__ = ["GenerationOutput", "Model", "ModelConfig", "drafters", "generate", "load_model"]
