"""specdec: speculative decoding research on JAX."""

from specdec import drafters
from specdec.generation import GenerationOutput, generate
from specdec.models import Model, ModelConfig
from specdec.weights import load_model

__all__ = ["GenerationOutput", "Model", "ModelConfig", "drafters", "generate", "load_model"]
