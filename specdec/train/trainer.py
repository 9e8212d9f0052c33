"""The optax training loop for drafters: batches, updates, held-out acceptance, checkpoints, resume.

A run directory holds ``checkpoint/`` (``drafter.json``: kind, recipe options, training
config, step, target shape; ``weights.safetensors``: the trainable parameters;
``optimizer.safetensors``: the optimiser state), ``log.jsonl`` (loss every ``log_every``
steps, held-out acceptance every ``eval_every``) and ``curves.png``. A checkpoint is
written to ``checkpoint.tmp/`` and swapped in whole, so an interrupted run resumes from
the last complete one with the same batches it would have seen (batch order depends only
on the seed and the step).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from safetensors.numpy import save_file
from tqdm import tqdm

from specdec.files import write_text_atomic
from specdec.generation import round_up
from specdec.models import Model, fused
from specdec.train.data import Corpus, answer_marker, hidden_features, pad_rows
from specdec.train.losses import DIVERGENCES
from specdec.train.recipes import RECIPES, agreement
from specdec.weights.files import one_line, read_json, read_safetensors

COUNTS = "token_counts"  # the corpus token counts [V], stored with the weights (vocabulary subsets)
HEADS = Path(__file__).resolve().parents[1] / "drafters" / "heads"  # shipped drafters: <kind>-<target name>/
LOSS_ON = ("all", "answers")  # the positions a training loss reads (TrainConfig.loss_on)


@dataclasses.dataclass
class TrainConfig:
    """kind: "distilled" or "eagle"; recipe: that recipe's options (see ``specdec.train.recipes``).
    Also the typed schema of the ``train`` config group (``experiments/conf.py``)."""

    kind: str = "eagle"
    name: str = ""  # names the run directory (default: the kind)
    recipe: dict[str, Any] = dataclasses.field(default_factory=dict)
    steps: int = 300
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 100
    seed: int = 0
    loss_on: str = "all"  # "all" real tokens, or "answers": those after the chat template's assistant marker

    def __post_init__(self):
        self.name = self.name or self.kind
        if self.kind not in RECIPES:
            raise ValueError(f"train.kind must be one of {', '.join(RECIPES)}; got {self.kind!r}")
        fields = {f.name for f in dataclasses.fields(RECIPES[self.kind])}
        unknown = sorted(set(self.recipe) - fields)
        if unknown:
            raise ValueError(
                f"train.recipe: unknown option {unknown[0]!r} for {self.kind}; allowed: {sorted(fields)}"
            )
        if self.recipe.get("divergence", "tvd") not in DIVERGENCES:
            raise ValueError(f"train.recipe.divergence must be one of {', '.join(DIVERGENCES)}")
        for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"train.loss_on must be one of {', '.join(LOSS_ON)}, got {self.loss_on!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"train.learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"train.warmup_steps must be in [0, steps), got {self.warmup_steps}")

    def make_recipe(self):
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in self.recipe.items()}
        return RECIPES[self.kind](**options)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _optimizer(cfg: TrainConfig):
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, cfg.warmup_steps, cfg.steps, end_value=0.1 * cfg.learning_rate
    )
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip), optax.adamw(schedule, weight_decay=cfg.weight_decay)
    )


def batch_indices(lengths: np.ndarray, batch_size: int, step: int, seed: int, pool: int = 16) -> np.ndarray:
    """Rows of step ``step`` (``lengths`` [N]: real tokens per row), deterministic for resume: one
    shuffle per epoch, cut into pools of ``pool`` batches whose rows are sorted by length, so a
    batch holds rows of similar length (less padding), then the epoch's batches shuffled."""
    n = len(lengths)
    per_epoch = max(n // batch_size, 1)
    epoch, i = divmod(step, per_epoch)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)[: per_epoch * batch_size]
    size = pool * batch_size
    pools = [p[np.argsort(lengths[p], kind="stable")] for p in np.split(order, range(size, len(order), size))]
    batches = np.concatenate(pools).reshape(per_epoch, -1)[rng.permutation(per_epoch)]
    return batches[i]


def _batch(corpus: Corpus, rows, layers: tuple[int, ...], top: int) -> dict:
    """Rows of the corpus, cut after their longest real token (rounded up to 64: few compiled
    shapes): tokens, mask, top [B, T, D] and features [B, T, L D] of ``layers`` (float32)."""
    rows = np.asarray(rows)
    longest = int(corpus.mask[rows].any(0).nonzero()[0].max()) + 1
    T = min(round_up(longest, 64), corpus.tokens.shape[1])
    picked = corpus.features[rows, :T]  # [B, T, Lc, D]
    pick = lambda ls: picked[:, :, [corpus.layers.index(i) for i in ls]].reshape(len(rows), T, -1)
    batch = {
        "tokens": jnp.asarray(corpus.tokens[rows, :T]),
        "mask": jnp.asarray(corpus.mask[rows, :T]),
        "top": jnp.asarray(pick((top,)), jnp.float32),
    }
    if layers:
        batch["features"] = jnp.asarray(pick(layers), jnp.float32)
    return batch


def _flat(state) -> dict[str, np.ndarray]:
    return {".".join(map(str, path)): np.asarray(v[...]) for path, v in nnx.to_flat_state(state)}


def _unflat(state, tensors: dict, source: str):
    flat = []
    for path, v in nnx.to_flat_state(state):
        key = ".".join(map(str, path))
        if key not in tensors or tensors[key].shape != v.shape:
            raise ValueError(f"{source}: missing or misshapen tensor {key!r} (expected shape {v.shape})")
        flat.append((path, v.replace(jnp.asarray(tensors[key], v.dtype))))
    return nnx.from_flat_state(flat)


def token_counts(corpus: Corpus, vocab_size: int) -> np.ndarray:
    """How often each token id occurs in the corpus [V] (float32)."""
    return np.bincount(corpus.tokens[corpus.mask], minlength=vocab_size).astype(np.float32)


def save_checkpoint(
    run_dir: Path, cfg: TrainConfig, target: Model, trainable, opt_state, step: int, counts
) -> Path:
    """Write run_dir/checkpoint/ atomically (a complete new folder swapped in)."""
    final, tmp = run_dir / "checkpoint", run_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({**_flat(trainable), COUNTS: np.asarray(counts)}, tmp / "weights.safetensors")
    save_file(
        {str(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(opt_state))},
        tmp / "optimizer.safetensors",
    )
    c = target.config
    meta = {
        "kind": cfg.kind,
        "train": cfg.to_dict(),
        "step": step,
        "target": {"name": target.name, "vocab_size": c.vocab_size, "dim": c.dim, "n_layers": c.n_layers},
    }
    (tmp / "drafter.json").write_text(json.dumps(meta, indent=1))
    return _swap_in(tmp, final)


def _swap_in(tmp: Path, final: Path) -> Path:
    """Replace folder ``final`` by the complete folder ``tmp`` (``final.old`` only while swapping)."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_head(checkpoint, folder, target: Model, evaluation: Corpus | None = None) -> Path:
    """A training run's drafter in the shipped form, written atomically to ``folder``: its weights
    in float16 (with the corpus token counts) and drafter.json with their sha256, the target
    layers it reads, and its teacher-forced agreement on ``evaluation`` (whose tokens are
    recorded, so that anyone can measure it again: ``evaluate_shipped``); no optimiser state."""
    source, folder = checkpoint_folder(checkpoint), Path(folder)
    meta, _, recipe, *_ = read_checkpoint(source, target)
    tensors = read_safetensors(source / "weights.safetensors")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    half = {k: v if k == COUNTS else v.astype(np.float16) for k, v in tensors.items()}
    save_file(half, tmp / "weights.safetensors")
    meta["sha256"] = _sha256(tmp / "weights.safetensors")
    meta["recipe_layers"] = list(recipe.feature_layers(target))
    if evaluation is not None:
        (tmp / "drafter.json").write_text(json.dumps(meta))
        tokens = [row[mask].tolist() for row, mask in zip(evaluation.tokens, evaluation.mask, strict=True)]
        meta["evaluation"] = {"tokens": tokens, **evaluate_shipped(tmp, target, tokens)}
    (tmp / "drafter.json").write_text(json.dumps(meta, indent=1))
    return _swap_in(tmp, folder)


def evaluate_shipped(folder, target: Model, tokens=None) -> dict:
    """A shipped head's teacher-forced agreement {"accept", "top1"} on token sequences ``tokens``
    (default: the ones its drafter.json records), their features computed from the target."""
    folder = checkpoint_folder(folder)
    meta, _, recipe, *weights = read_checkpoint(folder, target)
    tokens = meta["evaluation"]["tokens"] if tokens is None else tokens
    return evaluate(target, recipe, weights, features_corpus(target, recipe, tokens))


def features_corpus(target: Model, recipe, rows) -> Corpus:
    """Token-id lists -> a Corpus (right-padded) holding the target features ``recipe`` reads and
    the top layer's (the teacher's), read by length."""
    tokens, mask = pad_rows(rows)
    layers = tuple(sorted({*recipe.feature_layers(target), target.config.n_layers - 1}))
    return Corpus(tokens, mask, hidden_features(target, tokens, layers, mask=mask), layers)


def shipped_head(kind: str, target: Model) -> Path:
    """The folder of the head shipped for ``target`` (``HEADS/<kind>-<target name>``)."""
    folder = HEADS / f"{kind}-{target.name}"
    if not (folder / "drafter.json").is_file():
        have = sorted(p.parent.name for p in HEADS.glob("*/drafter.json"))
        raise FileNotFoundError(
            f"{kind}: no shipped head for target {target.name!r} (shipped: {', '.join(have) or 'none'}); "
            "train one with "
            "experiments/train_draft.py and pass checkpoint=<its run_dir>"
        )
    return folder


def checkpoint_folder(path) -> Path:
    """A run directory or its checkpoint/ folder -> the folder holding drafter.json."""
    path = Path(path)
    for candidate in (path, path / "checkpoint", path / "checkpoint.old"):
        if (candidate / "drafter.json").is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no drafter checkpoint (drafter.json) here or in {path / 'checkpoint'}")


def read_meta(path) -> tuple[dict, TrainConfig]:
    """A checkpoint's drafter.json and its TrainConfig; ValueError naming the file if it is corrupt."""
    path = Path(path)
    meta = read_json(path)
    for key, kind, what in (("kind", str, "a string"), ("train", dict, "an object"), ("step", int, "an int")):
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise ValueError(f"{path}: field {key!r} must be {what}, got {meta.get(key)!r}")
    if not isinstance(meta.get("target"), dict):
        raise ValueError(f"{path}: field 'target' must be an object, got {meta.get('target')!r}")
    for key in ("vocab_size", "dim"):
        value = meta["target"].get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"{path}: field 'target.{key}' must be an int, got {value!r}")
    try:
        cfg = TrainConfig(**meta["train"])
    except TypeError as err:  # an unknown option
        raise ValueError(f"{path}: field 'train': {one_line(err)}") from None
    except ValueError as err:
        raise ValueError(f"{path}: {one_line(err)}") from None
    return meta, cfg


def read_checkpoint(path, target: Model):
    """-> (meta, TrainConfig, recipe, graphdef, trainable, frozen, teacher), checked against the target."""
    folder = checkpoint_folder(path)
    meta, cfg = read_meta(folder / "drafter.json")
    c, want = target.config, meta["target"]
    if (c.vocab_size, c.dim) != (want["vocab_size"], want["dim"]):
        raise ValueError(
            f"{folder / 'drafter.json'}: trained for a target with vocab_size {want['vocab_size']} and dim "
            f"{want['dim']}, not {target.name!r} (vocab_size {c.vocab_size}, dim {c.dim})"
        )
    recipe = cfg.make_recipe()
    weights = folder / "weights.safetensors"
    if "sha256" in meta and _sha256(weights) != meta["sha256"]:
        raise ValueError(
            f"{weights}: checksum mismatch (sha256 {_sha256(weights)[:12]}..., {folder / 'drafter.json'} "
            f"records {str(meta['sha256'])[:12]}...): the file is corrupt or was replaced"
        )
    tensors = fused.fuse_stored(read_safetensors(weights), target.config)  # also from before the fusion
    graphdef, trainable, frozen, teacher = recipe.init(target, tensors.get(COUNTS))
    trainable = _unflat(trainable, tensors, str(folder / "weights.safetensors"))
    return meta, cfg, recipe, graphdef, trainable, frozen, teacher


def load_drafter(kind: str, target: Model, checkpoint=None, stop_below: float | None = None):
    """The drafter of a training run (``checkpoint``: its run directory), the head shipped for
    the target (None), or ``"untrained"``: the recipe's starting point (distilled: copied target
    layers; eagle: a fresh head)."""
    checkpoint = shipped_head(kind, target) if checkpoint is None else checkpoint
    if checkpoint == "untrained":
        recipe = RECIPES[kind]()
        graphdef, trainable, frozen, _ = recipe.init(target)
    else:
        meta, _, recipe, graphdef, trainable, frozen, _ = read_checkpoint(checkpoint, target)
        if meta["kind"] != kind:
            raise ValueError(
                f"{checkpoint_folder(checkpoint) / 'drafter.json'}: holds {meta['kind']} weights, not {kind}"
            )
    return recipe.drafter(target, graphdef, trainable, frozen, stop_below=stop_below)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _agreement(recipe, graphdef, trainable, frozen, teacher, batch):
    return agreement(recipe, graphdef, trainable, frozen, teacher, batch)


def evaluate(target: Model, recipe, weights, corpus: Corpus, batch_size: int = 8) -> dict:
    """Teacher-forced agreement over every position of ``corpus``: {"accept": mean 1 - TVD,
    "top1": greedy agreement rate} (see ``recipes.agreement``); weights = (graphdef, trainable,
    frozen, teacher) as ``recipe.init`` returns them."""
    graphdef, trainable, frozen, teacher = weights
    layers, top = recipe.feature_layers(target), target.config.n_layers - 1
    sums = {}
    for i in range(0, len(corpus), batch_size):
        rows = np.arange(i, min(i + batch_size, len(corpus)))
        part = _agreement(recipe, graphdef, trainable, frozen, teacher, _batch(corpus, rows, layers, top))
        sums = {k: sums.get(k, 0.0) + float(v) for k, v in part.items()}
    return {k: sums[k] / max(sums["positions"], 1.0) for k in ("accept", "top1")}


def _log(run_dir: Path, entry: dict) -> None:
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def read_log(run_dir) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def train(
    target: Model,
    corpus: Corpus,
    heldout: Corpus,
    cfg: TrainConfig,
    run_dir,
    *,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Train a drafter for ``target`` on ``corpus``; evaluate on ``heldout``; return the checkpoint folder.

    The loss reads every real token, or with ``cfg.loss_on`` "answers" only the answers' tokens
    (``Corpus.answers``: the positions a drafter drafts, EAGLE's loss mask); the held-out
    agreement is logged for both (heldout_top1, heldout_answer_top1, ...) when the target has a
    chat template. With ``resume`` and a checkpoint of the same config in ``run_dir``, training continues
    from its step (log entries after it are dropped); a checkpoint of another config is an error.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = cfg.make_recipe()
    optimizer = _optimizer(cfg)
    marker = answer_marker(target)
    parts = {"heldout": heldout}  # held-out agreement over every real token, and over the answers
    if marker is not None and len(answers := heldout.answers(marker)):
        parts["heldout_answer"] = answers
    if cfg.loss_on == "answers":
        corpus = corpus.answers(marker) if marker is not None else None
        if corpus is None or not len(corpus):
            raise ValueError(
                "train.loss_on=answers: no corpus row holds an answer (the target's chat template's "
                "assistant marker); use loss_on=all"
            )
    counts = token_counts(corpus, target.config.vocab_size)
    layers, top = recipe.feature_layers(target), target.config.n_layers - 1
    for i in (*layers, top):
        corpus.layer(i)  # ValueError naming a layer the corpus lacks, before anything compiles
    graphdef, trainable, frozen, teacher = recipe.init(target, counts)
    opt_state = optimizer.init(trainable)
    step = 0
    saved_any = any((run_dir / d / "drafter.json").is_file() for d in ("checkpoint", "checkpoint.old"))
    if resume and saved_any:  # checkpoint.old alone: interrupted while swapping in a new one
        meta, saved, _, _, trainable, _, _ = read_checkpoint(run_dir, target)
        if json.loads(json.dumps(cfg.to_dict())) != saved.to_dict():
            raise ValueError(
                f"{run_dir}: has a checkpoint of another training config; use another run_dir or resume=false"
            )
        optimizer_file = checkpoint_folder(run_dir) / "optimizer.safetensors"
        leaves = read_safetensors(optimizer_file)
        treedef = jax.tree.structure(opt_state)
        if sorted(leaves) != sorted(map(str, range(treedef.num_leaves))):
            raise ValueError(
                f"{optimizer_file}: holds {len(leaves)} optimiser arrays, expected {treedef.num_leaves}"
            )
        opt_state = jax.tree.unflatten(
            treedef, [jnp.asarray(leaves[str(i)]) for i in range(treedef.num_leaves)]
        )
        step = meta["step"]
        kept = "".join(json.dumps(e) + "\n" for e in read_log(run_dir) if e["step"] <= step)
        write_text_atomic(run_dir / "log.jsonl", kept)
    elif (run_dir / "log.jsonl").exists():
        (run_dir / "log.jsonl").unlink()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def update(trainable, opt_state, frozen, teacher, batch, key):
        loss, grads = jax.value_and_grad(lambda t: recipe.loss(graphdef, t, frozen, teacher, batch, key))(
            trainable
        )
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    def held_out(trainable) -> dict:
        """{"heldout_accept", "heldout_top1"} (and "heldout_answer_...") of ``evaluate``."""
        weights = (graphdef, trainable, frozen, teacher)
        return {
            f"{name}_{k}": v
            for name, part in parts.items()
            for k, v in evaluate(target, recipe, weights, part, cfg.batch_size).items()
        }

    if step == 0:
        first = held_out(trainable)
        if "vocab_ids" in frozen:  # the share of held-out tokens the vocabulary subset can draft
            first["heldout_vocab_coverage"] = float(
                np.isin(heldout.tokens[heldout.mask], frozen["vocab_ids"]).mean()
            )
        _log(run_dir, {"step": 0, **first})
    key = jax.random.key(cfg.seed)
    lengths = corpus.mask.shape[1] - np.argmax(corpus.mask[:, ::-1], 1)  # each row's end (its answer's)
    losses = []
    start = time.perf_counter()
    with tqdm(
        total=cfg.steps, initial=step, desc=f"train {cfg.kind}", unit="step", disable=not progress
    ) as bar:
        while step < cfg.steps:
            rows = batch_indices(lengths, cfg.batch_size, step, cfg.seed)
            batch = _batch(corpus, rows, layers, top)
            trainable, opt_state, loss = update(
                trainable, opt_state, frozen, teacher, batch, jax.random.fold_in(key, step)
            )
            step += 1
            losses.append(float(loss))
            bar.update(1)
            if step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
                _log(
                    run_dir,
                    {"step": step, "loss": float(np.mean(losses)), "elapsed_s": time.perf_counter() - start},
                )
                losses = []
            if step % cfg.eval_every == 0 or step == cfg.steps:
                _log(run_dir, {"step": step, **held_out(trainable)})
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint(run_dir, cfg, target, trainable, opt_state, step, counts)
    return checkpoint_folder(run_dir)
