"""Training drafters with optax: self-distillation data, recipes (distilled, eagle), the loop, checkpoints."""

from specdec.train.data import Corpus, sample_prompts, self_distillation_corpus, top_features
from specdec.train.recipes import RECIPES, Distilled, EagleRecipe
from specdec.train.trainer import TrainConfig, load_drafter, read_log, train

__all__ = [
    "RECIPES",
    "Corpus",
    "Distilled",
    "EagleRecipe",
    "TrainConfig",
    "load_drafter",
    "read_log",
    "sample_prompts",
    "self_distillation_corpus",
    "top_features",
    "train",
]
