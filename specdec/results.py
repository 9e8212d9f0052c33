"""Append-only results store: a JSONL file with one row per (run config, prompt).

Schema (``COLUMNS``, in this order; every row has exactly these keys). Non-finite floats
(NaN, inf) are stored as null; numpy scalars and arrays are stored as plain JSON numbers/lists.

    run_id                 str    one invocation of a config over a prompt set (``new_run_id``)
    time                   str    when the row was measured, ISO-8601 UTC (``utc_now``)
    git_commit             str    short commit of the specdec checkout, or "unknown" (``git_commit``)
    jax_version            str    jax.__version__
    device                 str    accelerator kind, e.g. "cpu", "NVIDIA H100 80GB HBM3"
    target                 str    target model: zoo name or path
    drafter                str    drafter name; "none" (``BASELINE_DRAFTER``) = autoregressive
    drafter_params         dict   the drafter's own settings, e.g. {"layers": 8}; {} if none
    gamma                  int    draft tokens per block (K); 0 for autoregressive decoding
    temperature            float  sampling temperature; 0 = greedy
    top_k                  int    top-k truncation, null = none
    top_p                  float  nucleus truncation, null = none
    task                   str    prompt set: "builtin" or a Spec-Bench-format file path
    category               str    Spec-Bench category of the prompt
    prompt_id              int    Spec-Bench question_id
    prompt_tokens          int    prompt length in tokens after chat templating (unpadded)
    new_tokens             int    tokens generated
    target_calls           int    target forward passes in the decode loop (prefill not counted)
    drafted                int    draft tokens proposed
    accepted               int    draft tokens accepted
    alpha                  float  accepted / (accepted + rejected): acceptance rate of the judged
                                  drafts (see specdec.metrics); null when none was judged
    tau                    float  new_tokens / target_calls, counting the bonus token (>= 1)
    accept_by_position     list   [gamma] floats: acceptance rate of each draft position
    wall_s                 float  seconds of the compiled call after block_until_ready, compile excluded
    tokens_per_s           float  new_tokens / wall_s
    baseline_tokens_per_s  float  autoregressive tokens/s of this prompt (same configuration, drafter
                                  "none") timed right before this row's run; in the baseline's own row
                                  (baseline_hash) its tokens_per_s; null if not measured
    speedup                float  tokens_per_s / baseline_tokens_per_s; null without a baseline
    cost_ratio_c           float  c = drafter step time / target step time at T = 1; null if unknown
    dtype                  str    the target's parameter dtype: float32 | bfloat16, with /int8 or /int4
                                  for a target whose weights were quantized at load (model.quant)
    schedule               str    the adaptive draft-length schedule, null = fixed gamma
    acceptance             dict   the acceptance rule and its options, e.g. {"rule": "TypicalLossy", ...}
    seed                   int    the PRNG seed of the run
    max_new_tokens         int    the token budget per turn
    config                 dict   the resolved configuration this row measured (device, model, drafter
                                  and all its options, sampling, acceptance, seed, budget, task, prompt)
    config_hash            str    ``config_hash(config)``: the identity of the measurement
    baseline_hash          str    the config_hash of this prompt's autoregressive baseline: the same
                                  configuration with the drafter "none"
    accept_by_rank         dict   {"tried": [gamma][R], "accepted": [gamma][R]} int counts of the
                                  children judged / accepted by depth - 1 and sibling rank (R = 1 for a
                                  chain); theory.tree_acceptance turns them into the tree cost model's
                                  table; null for rows without drafts or written before it existed
    batch                  int    rows decoded together (copies of the prompt's first turn when > 1)
    context                int    prompt tokens of a long-context run (documents before the first
                                  turn, cut to this length); null: the task's prompts as they are
    verify_cost_r          float  r(gamma + 1): one target pass over gamma + 1 positions / a decode
                                  step, measured (specdec.costs) at this batch and context
    predicted_speedup      float  theory.predicted_speedup from this row's alpha, gamma, c,
                                  verify_cost_r and share of drafting steps; null without them
    verified               int    positions the target scored in the decode loop (a step scores 1
                                  without drafts, gamma + 1 with a chain, the tree's nodes + 1)
    prefill_s              float  seconds of wall_s spent in the target's prefill of this row's
                                  prompts (a program of its own, timed in the same calls); null in V4
    decode_speedup         float  (baseline wall_s - prefill_s) / (wall_s - prefill_s): the speedup
                                  of decoding alone, which predicted_speedup predicts; null if unknown
    machine                str    the machine as the cost and kernel caches key it (kernels.machine():
                                  device kind and count, processor, vector extension); null in V5
    verify_build           str    the XLA build of the row's decode loop (kernels.BUILDS): "default"
                                  for autoregressive rows, kernels.verify_build for speculative ones;
                                  null in V5
    timed_runs             int    timed runs of this configuration on this prompt (``repeats``), each
                                  next to an autoregressive one; wall_s and the counters are the
                                  median run's, baseline_tokens_per_s the median autoregressive run's;
                                  null in V6

Stores written before dtype ... baseline_hash existed stay readable: such a row is upgraded on
read (``config`` and ``baseline_hash`` null, ``config_hash`` derived from its old columns with a
"v1-" prefix, so it never matches, and is never reused for, a configuration measured today).
Rows written before accept_by_rank, before batch ... predicted_speedup, before verified ...
decode_speedup, before machine and verify_build, or before timed_runs, read with those null
(batch 1).

Writing: ``append`` validates every row first (nothing is written if one is bad), then, under
an exclusive ``filelock`` on the sidecar ``<path>.lock``, writes the whole block with one
``os.write`` on an O_APPEND descriptor and fsyncs it, so concurrent writers (several processes
of one sweep) never interleave. Every row ``append`` writes ends with a newline.

Partial-line policy: a killed writer (or a non-atomic file system) can leave a final line
without its newline. If that line is a complete, valid row (a hand edit or ``cat a b > c`` can
drop the last newline too), it is a row like any other: ``rows()`` returns it and the next
``append`` first adds the missing newline. Otherwise (not JSON, or not exactly ``COLUMNS``) it
is an interrupted write: ``rows()`` ignores it with a ``PartialLineWarning`` naming the file and
line, and the next ``append`` removes it (under the lock no other writer is active, so it is
certainly dead) before writing. Any other malformed line is an error naming file:line. Complete
rows of an interrupted block stay: each row stands alone, and a resumed sweep simply recomputes
the configurations whose rows are missing.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import secrets
import subprocess
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path

import numpy as np
from filelock import FileLock

COLUMNS = (
    "run_id",
    "time",
    "git_commit",
    "jax_version",
    "device",
    "target",
    "drafter",
    "drafter_params",
    "gamma",
    "temperature",
    "top_k",
    "top_p",
    "task",
    "category",
    "prompt_id",
    "prompt_tokens",
    "new_tokens",
    "target_calls",
    "drafted",
    "accepted",
    "alpha",
    "tau",
    "accept_by_position",
    "wall_s",
    "tokens_per_s",
    "baseline_tokens_per_s",
    "speedup",
    "cost_ratio_c",
    "dtype",
    "schedule",
    "acceptance",
    "seed",
    "max_new_tokens",
    "config",
    "config_hash",
    "baseline_hash",
    "accept_by_rank",
    "batch",
    "context",
    "verify_cost_r",
    "predicted_speedup",
    "verified",
    "prefill_s",
    "decode_speedup",
    "machine",
    "verify_build",
    "timed_runs",
)
V1_COLUMNS = COLUMNS[:28]  # the schema before the configuration identity columns
V2_COLUMNS = COLUMNS[:36]  # the schema before accept_by_rank
V3_COLUMNS = COLUMNS[:37]  # the schema before batch, context and the cost model's prediction
V4_COLUMNS = COLUMNS[:41]  # the schema before verified, prefill_s and decode_speedup
V5_COLUMNS = COLUMNS[:44]  # the schema before machine and verify_build
V6_COLUMNS = COLUMNS[:46]  # the schema before timed_runs
NEW_IN_V4 = dict(batch=1, context=None, verify_cost_r=None, predicted_speedup=None)
NEW_IN_V5 = dict(verified=None, prefill_s=None, decode_speedup=None)
NEW_IN_V6 = dict(machine=None, verify_build=None)
NEW_IN_V7 = dict(timed_runs=None)
# The column sets of the schemas after the first, read with their later columns null
_UPGRADABLE = frozenset(frozenset(v) for v in (V2_COLUMNS, V3_COLUMNS, V4_COLUMNS, V5_COLUMNS, V6_COLUMNS))
V1_CONFIG_COLUMNS = (
    "device",
    "target",
    "drafter",
    "drafter_params",
    "gamma",
    "temperature",
    "top_k",
    "top_p",
    "task",
    "prompt_id",
)
BASELINE_DRAFTER = "none"
V1_RULES = {"speculative": "SpeculativeSampling", "typical_lossy": "TypicalLossy"}  # names -> classes


class PartialLineWarning(UserWarning):
    """A final line without a newline (an interrupted write) was ignored or removed."""


def config_hash(config: Mapping) -> str:
    """The identity of a measurement: 16 hex digits of the SHA-256 of its configuration as
    canonical JSON (sorted keys, tuples as lists), so key order never matters."""
    text = json.dumps(_clean(dict(config)), sort_keys=True, allow_nan=False, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def config_key(row: Mapping) -> str:
    """The key a row is found by: its ``config_hash``."""
    return row["config_hash"]


def rule_label(acceptance: Mapping) -> str:
    """An ``acceptance`` column value as text: the rule, then its options in brackets."""
    options = ", ".join(f"{k}={v}" for k, v in acceptance.items() if k != "rule")
    return acceptance["rule"] + (f"[{options}]" if options else "")


def _upgrade_v1(row: dict) -> dict:
    """A row of the 28-column schema in today's ``COLUMNS``; its loop settings were kept in
    drafter_params then."""
    params = dict(row["drafter_params"] or {})
    old_key = {c: row[c] for c in V1_CONFIG_COLUMNS}
    rule = params.pop("acceptance", None)
    upgraded = dict(
        row,
        drafter_params={k: v for k, v in params.items() if k not in ("schedule", "max_new_tokens")},
        dtype=None,
        schedule=params.get("schedule"),
        acceptance=None if rule is None else {"rule": V1_RULES.get(rule, rule)},
        seed=None,
        max_new_tokens=params.get("max_new_tokens"),
        config=None,
        config_hash="v1-" + config_hash(old_key),
        baseline_hash=None,
        accept_by_rank=None,
        **NEW_IN_V4,
        **NEW_IN_V5,
        **NEW_IN_V6,
        **NEW_IN_V7,
    )
    return {c: upgraded[c] for c in COLUMNS}


def git_commit() -> str:
    """Short commit hash of the checkout holding this file, or "unknown"; never raises."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else "unknown"


def new_run_id() -> str:
    """A sortable, unique run id: UTC time plus random hex, e.g. "20250101-120000-3f9a1c"."""
    return f"{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def utc_now() -> str:
    """The current time as ISO-8601 UTC with seconds, the format of the ``time`` column."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _clean(value):
    # numpy -> Python, tuples -> lists, non-finite floats -> None (strict JSON has no NaN).
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    return value


def _encode(rows: Iterable[Mapping]) -> bytes:
    lines = []
    for i, row in enumerate(rows):
        missing = [c for c in COLUMNS if c not in row]
        unknown = [c for c in row if c not in COLUMNS]
        if missing:
            raise ValueError(f"row {i} is missing column {missing[0]!r} (missing: {missing})")
        if unknown:
            raise ValueError(f"row {i} has unknown column {unknown[0]!r} (unknown: {unknown})")
        out = {}
        for c in COLUMNS:
            try:
                out[c] = _clean(row[c])
                json.dumps(out[c], allow_nan=False)
            except (TypeError, ValueError) as e:
                raise ValueError(f"row {i}, column {c!r}: value {row[c]!r} is not JSON-serialisable") from e
        lines.append(json.dumps(out, allow_nan=False, ensure_ascii=False) + "\n")
    return "".join(lines).encode("utf-8")


def _decode_row(line: bytes) -> tuple[dict | None, str | None]:
    """``(row, None)`` if ``line`` (without its newline) is a complete valid row, else ``(None, why)``."""
    try:
        row = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"not a valid JSON row ({e})"
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}"
    if set(row) == set(V1_COLUMNS):
        try:
            return _upgrade_v1(row), None
        except (TypeError, ValueError, AttributeError) as e:
            return None, f"a row of the first schema that cannot be read ({e})"
    if frozenset(row) in _UPGRADABLE:
        row = dict(dict(accept_by_rank=None, **NEW_IN_V4, **NEW_IN_V5, **NEW_IN_V6, **NEW_IN_V7), **row)
        return {c: row[c] for c in COLUMNS}, None
    missing = [c for c in COLUMNS if c not in row]
    unknown = [c for c in row if c not in COLUMNS]
    if missing or unknown:
        col = missing[0] if missing else unknown[0]
        kind = "missing" if missing else "unknown"
        return None, f"{kind} column {col!r} (missing: {missing}, unknown: {unknown})"
    return row, None


def _repair_tail(fd: int, path: Path) -> None:
    # Under the lock: if the file does not end in a newline, either finish a complete valid last
    # row with its newline, or cut an incomplete one back to the previous newline.
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - 65536)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            end = start + cut + 1
            break
        end = start
    if _decode_row(os.pread(fd, size - end, end))[0] is not None:
        os.write(fd, b"\n")  # O_APPEND: lands at the end, completing the row
        return
    warnings.warn(
        f"{path}: removed an incomplete final line ({size - end} bytes) left by an interrupted write",
        PartialLineWarning,
        stacklevel=3,
    )
    os.ftruncate(fd, end)


class ResultsStore:
    """The JSONL results file at ``path`` (created with its parent folders on first append)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.lock_path = Path(f"{self.path}.lock")

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    def append(self, rows: Iterable[Mapping]) -> int:
        """Append ``rows`` (dicts with exactly ``COLUMNS``) as one atomic block; returns how many.

        Raises ValueError naming the row and column if any row is bad; then nothing is written.
        """
        rows = list(rows)
        data = _encode(rows)
        if not data:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.lock_path):
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                _repair_tail(fd, self.path)
                written = os.write(fd, data)  # one write: on local file systems the block lands whole
                while written < len(data):  # short write (disk nearly full): finish it, still under lock
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            finally:
                os.close(fd)
        return len(rows)

    def check_writable(self) -> None:
        """Create the parent folder, take the lock and open the file for appending (writing
        nothing), so a store that cannot be written fails before any measurement, naming the path."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(self.lock_path, timeout=60):
                existed = self.path.exists()
                os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
                if not existed:
                    self.path.unlink()  # leave no empty store behind
        except OSError as err:
            raise ValueError(f"results store {self.path} is not writable: {err.strerror or err}") from None

    def rows(self) -> list[dict]:
        """Every row, in file order; [] if the file does not exist yet.

        A malformed line raises ValueError naming file:line. A final line without its newline
        is returned if it is a complete valid row, else ignored with a PartialLineWarning.
        """
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        out = []
        for n, line in enumerate(lines, start=1):
            out.append(self._parse(line, n))
        last = _decode_row(tail)[0] if tail else None
        if last is not None:  # a complete row that only lacks its newline (e.g. a hand edit)
            out.append(last)
        elif tail:
            warnings.warn(
                f"{self.path}:{len(lines) + 1}: ignoring an incomplete final line ({len(tail)} bytes, "
                "no newline) left by an interrupted write",
                PartialLineWarning,
                stacklevel=2,
            )
        return out

    def _parse(self, line: bytes, n: int) -> dict:
        row, error = _decode_row(line)
        if error is not None:
            raise ValueError(f"{self.path}:{n}: {error}")
        return row

    def to_dataframe(self):
        """All rows as a pandas DataFrame with columns in ``COLUMNS`` order (nulls become NaN/None)."""
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(COLUMNS))

    def finished(self, key_fn: Callable[[Mapping], Hashable] = config_key) -> set:
        """The set of ``key_fn(row)`` over all rows: configurations a resumed sweep can skip."""
        return {key_fn(row) for row in self.rows()}

    def has(self, key: str) -> bool:
        """Whether a row with this ``config_key`` exists (reads the file: use ``finished`` in loops)."""
        return key in self.finished()
