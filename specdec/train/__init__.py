"""Training drafters with optax: self-distillation data, recipes (distilled, eagle), the loop, checkpoints."""

from specdec.train.data import Corpus, build_corpus, hidden_features, self_distillation_corpus
from specdec.train.recipes import RECIPES, Distilled, EagleRecipe
from specdec.train.trainer import TrainConfig, evaluate_shipped, export_head, load_drafter, read_log, train

__all__ = [
    "RECIPES",
    "Corpus",
    "Distilled",
    "EagleRecipe",
    "TrainConfig",
    "build_corpus",
    "evaluate_shipped",
    "export_head",
    "hidden_features",
    "load_drafter",
    "read_log",
    "self_distillation_corpus",
    "train",
]
