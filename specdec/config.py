"""The typed configuration of a run: the schema Hydra composes and the identity of a measurement.

Plain dataclasses (the library never imports Hydra): ``experiments/conf.py`` registers them
with Hydra's ConfigStore, where they are the options of the config groups, so a YAML file or
a command-line override only selects and overrides, and a value of the wrong type fails at
composition, naming its key. ``_target_`` names what ``hydra.utils.instantiate`` builds from a
node (model, sampling, acceptance rule, task); drafters are built by their registry
(``specdec.drafters.make(name, target, **options)``).

``RunConfig.__post_init__`` checks the rest (ranges, names) before any model is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any

from specdec import checks

MISSING = "???"  # OmegaConf's marker of a value that must be given


DTYPES = ("float32", "bfloat16")  # a target's parameter dtype, by name


def check_mesh(mesh) -> None:
    """``model.mesh``: null or [1, model]: a run decodes one prompt at a time (batch 1), so only
    the model axis can split it (``specdec.generate`` takes any [data, model] with batches)."""
    if mesh is None:
        return
    if len(checks.integers(mesh, "model.mesh", low=1)) != 2 or mesh[0] != 1:
        raise ValueError(
            f"model.mesh must be null or [1, model] (a run decodes one prompt at a time), got {list(mesh)}"
        )


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype must be float32 or bfloat16, got {dtype!r}")


@dataclasses.dataclass
class ModelSpec:
    """A target by zoo name (smollm2-135m-instruct, tiny-random), HF checkpoint folder or .gguf file."""

    _target_: str = "specdec.experiment.load_target"
    name: str = MISSING
    dtype: str = "float32"  # float32 | bfloat16
    quant: str | None = None  # null | int8 | int4: weight-only quantization at load (specdec.models.quant)
    mesh: list[int] | None = None  # null (one device) | [1, model]: tensor-parallel (specdec.sharding)


@dataclasses.dataclass
class DistributedConfig:
    """``jax.distributed.initialize`` before the target loads (several processes, one per host):
    ``initialize: true`` with coordinator ("host:port"), num_processes and process_id, or with
    none of them where JAX detects the cluster (SLURM). Only process 0 writes results."""

    initialize: bool = False
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


AUTO = "auto"  # drafter.gamma chosen by the cost model (specdec.experiment.auto_gamma)


@dataclasses.dataclass
class DrafterConfig:
    """A way of drafting: ``name`` (a key of ``specdec.drafters.REGISTRY``, or "none"), the loop's
    draft length and schedule; a subclass adds the drafter's own options as fields."""

    name: str = "none"
    gamma: Any = 4  # K: draft tokens per step (an int >= 1), or "auto": the cost model's choice
    schedule: str | None = None  # null | heuristic (adaptive gamma)

    def options(self) -> dict:
        """The keyword arguments of the drafter's maker: every field a subclass adds."""
        return self.options_of(dataclasses.asdict(self))

    @staticmethod
    def options_of(settings: dict) -> dict:
        """``settings`` (a drafter's fields by name) without the loop's: name, gamma, schedule;
        a tree without a kind (a chain) is left out, and so are a tree's unset options."""
        base = {f.name for f in dataclasses.fields(DrafterConfig)}
        options = {k: v for k, v in settings.items() if k not in base}
        tree = options.pop("tree", None)
        if tree is not None and tree.get("kind") is not None:
            options["tree"] = {k: v for k, v in tree.items() if v is not None}
        return options


@dataclasses.dataclass
class TreeConfig:
    """Draft token trees (``specdec.drafters.tree``): kind null (chains), static (``paths`` of sibling
    ranks, e.g. [[0],[1],[0,0]]) or dynamic (``n_nodes`` best of a tree grown ``depth`` levels deep,
    expanding ``top_k`` nodes per level). With a tree, drafter.gamma bounds the depth."""

    kind: str | None = None  # null | static | dynamic
    paths: Any = None  # list[list[int]] for a static tree
    n_nodes: int | None = None
    depth: int | None = None
    top_k: int | None = None


@dataclasses.dataclass
class NoDrafterConfig(DrafterConfig):
    """Plain autoregressive decoding: only the baseline rows."""

    gamma: Any = 1


@dataclasses.dataclass
class NGramConfig(DrafterConfig):
    """Prompt lookup: propose what followed the latest earlier match of the last n tokens."""

    name: str = "ngram"
    max_ngram: int = 3
    min_ngram: int = 1
    n_candidates: int = 1  # > 1: a tree of that many matches' continuations


@dataclasses.dataclass
class DraftModelConfig(DrafterConfig):
    """A separate draft model sharing the tokenizer (``draft``: zoo name, HF folder or .gguf; null:
    the target itself), run on its first ``layers`` layers (an int) or these layer indices."""

    name: str = "draft_model"
    gamma: Any = 3
    draft: str | None = None
    layers: Any = 8  # int | list[int] | null (all)
    stop_below: float | None = None  # stop a row's drafting below this draft confidence
    tree: TreeConfig = field(default_factory=TreeConfig)


@dataclasses.dataclass
class LayerSkipConfig(DrafterConfig):
    """Self-speculative decoding: the target without the layers in ``skip`` (or keeping its
    ``first`` k layers, or the set experiments/search_layer_skip.py wrote to ``skip_file``)."""

    name: str = "layer_skip"
    gamma: Any = 3
    skip: list[int] | None = None
    first: int | None = None
    skip_file: str | None = None
    tree: TreeConfig = field(default_factory=TreeConfig)


@dataclasses.dataclass
class QuantizedConfig(DrafterConfig):
    """The target's own weights quantized to ``bits`` (8 | 4) as its draft; ``group``: rows per scale
    (null: per output column for 8, 32 for 4); ``layers`` as for draft_model (null: all)."""

    name: str = "quantized"
    bits: int = 4
    group: int | None = None
    layers: Any = None
    stop_below: float | None = None
    tree: TreeConfig = field(default_factory=TreeConfig)


@dataclasses.dataclass
class CountConfig(DrafterConfig):
    """Leviathan et al.'s count baselines (unigram, bigram) over the context plus ``corpus``."""

    name: str = "unigram"
    gamma: Any = 2
    corpus: list[str] = field(default_factory=list)


@dataclasses.dataclass
class TrainedConfig(DrafterConfig):
    """A trained drafter (eagle, distilled): ``checkpoint`` is a run directory of
    experiments/train_draft.py, null for the head shipped for the target (specdec/drafters/heads),
    or "untrained" for the recipe's starting point."""

    name: str = "eagle"
    checkpoint: str | None = None
    stop_below: float | None = None
    tree: TreeConfig = field(default_factory=TreeConfig)


@dataclasses.dataclass
class TaskConfig:
    """A prompt set: "builtin" or any Spec-Bench-format JSONL file; optionally some categories and
    the first ``per_category`` prompts of each."""

    _target_: str = "specdec.tasks.load_task"
    name_or_path: str = MISSING  # "builtin" or a path
    categories: list[str] | None = None
    per_category: int | None = None


@dataclasses.dataclass
class SamplingConfig:
    """How tokens are chosen (``specdec.sampling.Sampling``); temperature 0 is greedy."""

    _target_: str = "specdec.sampling.Sampling"
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None


@dataclasses.dataclass
class AcceptanceConfig:
    """An acceptance rule of ``specdec.acceptance``; subclasses add the rule's options."""

    _target_: str = "specdec.acceptance.SpeculativeSampling"


@dataclasses.dataclass
class TypicalLossyConfig(AcceptanceConfig):
    """Medusa's typical acceptance: NOT lossless."""

    _target_: str = "specdec.acceptance.TypicalLossy"
    epsilon: float = 0.09
    delta: float = 0.3


@dataclasses.dataclass
class PathsConfig:
    """Where a run writes (relative paths are taken from the current directory)."""

    results_dir: str = "results"
    results_path: str = "${paths.results_dir}/results.jsonl"
    figures_dir: str = "${paths.results_dir}/figures"
    runs_dir: str = "${paths.results_dir}/runs"  # Hydra run directories (config, log, summary.json)
    checkpoints_dir: str = "checkpoints"
    costs_path: str = "${paths.results_dir}/costs.json"  # measured c and r(T) (specdec.costs)


@dataclasses.dataclass
class RunConfig:
    """One experiment: a target, a drafter, sampling and acceptance over a task's prompts.

    The fields without a default are config groups: composition fills them with one option
    (a subclass instance for drafter and acceptance), so an option's own missing values (``???``)
    stay missing and are reported instead of being filled by a default.
    """

    model: ModelSpec = MISSING
    drafter: DrafterConfig = MISSING
    task: TaskConfig = MISSING
    sampling: SamplingConfig = MISSING
    acceptance: AcceptanceConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    max_new_tokens: int = 64
    seed: int = 0
    batch: int = 1  # rows decoded together (copies of each prompt's first turn when > 1)
    context: int | None = None  # null | prompt tokens: documents before each first turn, cut to this
    force: bool = False  # re-measure configurations already in the results store
    repeats: int = 1  # timed runs of each prompt, alternated with its baseline's: a row is the median run

    def __post_init__(self):
        from specdec import drafters  # drafters and the loop import models; keep this module light
        from specdec.decode import SCHEDULES
        from specdec.models.quant import check_quant

        d = self.drafter
        drafters.check_name(d.name, "drafter.name: ")
        if isinstance(d.gamma, str) and d.gamma != AUTO:
            raise ValueError(f"drafter.gamma must be an integer >= 1 or auto, got {d.gamma!r}")
        if d.gamma != AUTO:
            checks.integer(d.gamma, "drafter.gamma", low=1)
        if d.schedule not in SCHEDULES:
            raise ValueError(f"drafter.schedule must be null or heuristic, got {d.schedule!r}")
        checks.integer(self.max_new_tokens, "max_new_tokens", low=1)
        checks.integer(self.seed, "seed")
        check_dtype(self.model.dtype)
        check_quant(self.model.quant, "model.quant")
        check_mesh(self.model.mesh)
        checks.optional_integer(self.task.per_category, "task.per_category", low=1)
        checks.integer(self.batch, "batch", low=1)
        checks.integer(self.repeats, "repeats", low=1)
        checks.optional_integer(self.context, "context", low=16)

    def identity(self) -> dict:
        """The resolved settings that change what is measured: everything but where results go and
        ``force`` and ``repeats``; ``_target_`` keys dropped, the acceptance rule named by its class."""

        def plain(node) -> dict:
            return {k: v for k, v in dataclasses.asdict(node).items() if k != "_target_"}

        drafter = {f.name: getattr(self.drafter, f.name) for f in dataclasses.fields(DrafterConfig)}
        model = plain(self.model)
        for key in ("quant", "mesh"):  # unset: the identity a target had before these options existed
            if model[key] is None:
                del model[key]
        # batch 1 without a context: the identity rows had before these options existed
        shape = (
            {} if self.batch == 1 and self.context is None else dict(batch=self.batch, context=self.context)
        )
        return dict(
            model=model,
            drafter=dict(drafter, **self.drafter.options()),  # a chain's identity has no tree
            task=self.task.name_or_path,  # a row is one prompt: which ones a run selects is no identity
            sampling=plain(self.sampling),
            acceptance={"rule": self.acceptance._target_.rsplit(".", 1)[-1], **plain(self.acceptance)},
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
            **shape,
        )


@dataclasses.dataclass
class DataConfig:
    """The self-distillation corpus of experiments/train_draft.py: prompts of six categories the
    target fills and answers itself (``specdec.train.prompts``), in resumable shards."""

    dir: str = "${paths.checkpoints_dir}/corpus-${model.name}"  # train/ and heldout/ shards
    tokens: int = 500_000  # real tokens to train on (the corpus is extended to hold them)
    batch: int = 32  # prompts per shard, generated in one batch
    response_tokens: int = 128
    max_len: int = 512  # tokens per sequence (prompt + answer), longer ones cut
    layers: list[int] | None = None  # target layers stored (default: 2, n/2 and the top one)
    heldout_batch: int = 8  # prompts per held-out shard (one shard per category, another seed)
    seed: int = 0

    def __post_init__(self):
        for name in ("tokens", "batch", "response_tokens", "max_len", "heldout_batch"):
            checks.integer(getattr(self, name), f"data.{name}", low=1)


@dataclasses.dataclass
class TrainDraftConfig:
    """A drafter training run: data, then an optax recipe (the ``train`` group: a TrainConfig)."""

    model: ModelSpec = MISSING
    train: Any = MISSING  # a specdec.train.TrainConfig (the train group)
    data: DataConfig = field(default_factory=DataConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    run_dir: str = "${paths.checkpoints_dir}/${train.name}-${model.name}"  # checkpoint/, log, curves
    export: str | None = None  # also write the trained drafter in the shipped form (float16, checksum) here
    resume: bool = True  # continue from run_dir's checkpoint (same config) after an interruption
