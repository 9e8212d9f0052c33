"""Registers specdec's typed configs (``specdec.config``) with Hydra's ConfigStore.

The dataclasses are the schema and their instances below are the options of the config
groups, so YAML in ``configs/`` only selects and overrides (a value of the wrong type fails
when the config is composed, naming its key). Entry points call ``register()`` before
``hydra.main`` runs; a new option is one line here, or a YAML file in ``configs/<group>/``
whose defaults list starts from one of these (``defaults: [ngram, _self_]``).
"""

from __future__ import annotations

import dataclasses
import functools

from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from specdec import experiment
from specdec.config import (
    AcceptanceConfig,
    CountConfig,
    DraftModelConfig,
    LayerSkipConfig,
    ModelSpec,
    NGramConfig,
    NoDrafterConfig,
    PathsConfig,
    QuantizedConfig,
    RunConfig,
    SamplingConfig,
    TaskConfig,
    TrainDraftConfig,
    TrainedConfig,
    TreeConfig,
    TypicalLossyConfig,
)
from specdec.train import TrainConfig


def load_target(name: str, dtype: str = "float32", quant: str | None = None, mesh=None):
    """``specdec.experiment.load_target``, once per process and (name, dtype, quant, mesh): the
    jobs of a Hydra multirun share the loaded target (and so its compiled programs)."""
    return _loaded(name, dtype, quant, None if mesh is None else tuple(mesh))


@functools.cache
def _loaded(name: str, dtype: str, quant: str | None, mesh: tuple[int, ...] | None):
    return experiment.load_target(name, dtype, quant, mesh)


LOADER = f"{__name__}.load_target"
GROUPS = {
    "model": {
        "smollm2_135m": ModelSpec(LOADER, name="smollm2-135m-instruct"),  # the embedded default target
        "tiny": ModelSpec(LOADER, name="tiny-random"),  # random weights, its own 512-token tokenizer
        "hf_dir": ModelSpec(LOADER),  # model=hf_dir model.name=/path/to/folder (Llama, Mistral, Qwen2)
    },
    "drafter": {
        "none": NoDrafterConfig(),
        "ngram": NGramConfig(),
        "draft_model": DraftModelConfig(),
        # The upper half of SmolLM2's 30 layers but one; search_layer_skip.py finds better sets.
        "layer_skip": LayerSkipConfig(skip=list(range(14, 29))),
        "layer_skip_searched": LayerSkipConfig(skip_file="${paths.results_dir}/layer_skip.json"),
        "quantized": QuantizedConfig(),  # drafter.bits=8 | 4
        "unigram": CountConfig(name="unigram"),
        "bigram": CountConfig(name="bigram"),
        "eagle": TrainedConfig(name="eagle"),  # the shipped head; drafter.checkpoint=<run_dir> for another
        "distilled": TrainedConfig(
            name="distilled", checkpoint="${paths.checkpoints_dir}/distilled-${model.name}"
        ),
    },
    # Tree shapes for drafters with a distribution: drafter/tree=dynamic16 (gamma bounds the depth).
    "drafter/tree": {
        "chain": TreeConfig(),
        **{f"dynamic{n}": TreeConfig(kind="dynamic", n_nodes=n, depth=5, top_k=4) for n in (4, 8, 16, 32)},
    },
    "task": {
        "builtin": TaskConfig(name_or_path="builtin"),  # 30 prompts, 6 Spec-Bench categories
        "spec_bench_file": TaskConfig(),  # task.name_or_path=question.jsonl
    },
    "sampling": {
        "greedy": SamplingConfig(),
        "t07": SamplingConfig(temperature=0.7),
        "t10": SamplingConfig(temperature=1.0),
    },
    "acceptance": {
        "speculative": AcceptanceConfig(),  # lossless
        "typical_lossy": TypicalLossyConfig(),  # Medusa's typical acceptance, NOT lossless
    },
    "paths": {"default": PathsConfig()},
    "train": {
        # EAGLE-3 (the shipped head's recipe): features fused from target layers 2, n/2 and the top,
        # 3 training-time-test steps, the KL loss alone; drafting over the 8192 most frequent corpus
        # tokens (FR-Spec).
        "eagle": TrainConfig(
            kind="eagle",
            recipe=dict(cls_weight=1.0, feature_weight=0.0, layers="low_mid_high", unroll=3, vocab=8192),
            steps=3000,
            batch_size=8,
            warmup_steps=100,
        ),
        # EAGLE-1 for comparison: the top layer's features, loss = smooth-L1(features) + 0.1 KL(p || q).
        "eagle1": TrainConfig(
            kind="eagle",
            name="eagle1",
            recipe=dict(cls_weight=0.1, feature_weight=1.0, vocab=8192),
            steps=3000,
            batch_size=8,
            warmup_steps=100,
        ),
        # A small draft transformer (DistillSpec): the target's width, layers initialised from target
        # layers [0, -1]; divergence: tvd (1 - acceptance rate) | forward_kl | reverse_kl.
        "distilled": TrainConfig(
            kind="distilled",
            recipe=dict(layers=[0, -1], divergence="tvd"),
            steps=600,
            learning_rate=3e-4,
            warmup_steps=30,
        ),
    },
}


def register() -> None:
    """Store the run schema and every group option (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="train_draft_schema", node=TrainDraftConfig)
    for group, options in GROUPS.items():
        for name, node in options.items():
            cs.store(group=group, name=name, node=node)


USER_ERRORS = (ValueError, TypeError, FileNotFoundError, OmegaConfBaseException, InstantiationException)


def one_line(err: Exception) -> str:
    """The first line of a user error, naming the config key where OmegaConf knows it; for an
    error raised while instantiating a ``_target_``, the error itself."""
    key = getattr(err, "full_key", None)
    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    return str(err).splitlines()[0] + (f" (key: {key})" if key else "")


def reject_unknown_keys(cfg: DictConfig, node, prefix: str = "") -> None:
    """``+key=value`` can add a key the schema lacks, which the typed object would silently drop:
    refuse it, naming the key and what the schema allows."""
    fields = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
    for key in cfg:
        if key not in fields:
            allowed = ", ".join(k for k in fields if k != "_target_")
            raise ValueError(f"{prefix}{key}: unknown key; allowed: {allowed}")
        if dataclasses.is_dataclass(fields[key]):
            reject_unknown_keys(cfg[key], fields[key], f"{prefix}{key}.")


def typed(cfg: DictConfig):
    """The composed config as its schema's dataclasses (types and ``__post_init__`` checks run),
    refusing keys the schema lacks."""
    obj = OmegaConf.to_object(cfg)
    reject_unknown_keys(cfg, obj)
    return obj
