"""Prompt sets in Spec-Bench's question format.

A task file is JSONL, one question per line:

    {"question_id": 1, "category": "qa", "turns": ["first user turn", ...], "reference": ["..."]}

``question_id`` (int), ``category`` (str) and ``turns`` (non-empty list of str) are required;
``reference`` (list of str) is optional; any other field (Spec-Bench files carry some) is ignored.
The built-in set (``specdec/data/spec_bench_mini.jsonl``) has 5 original prompts in each of
``CATEGORIES``: 2-turn chats, translation, summarisation of a paragraph, factual QA,
grade-school maths and retrieval-augmented QA (passages, then a question answerable from them).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path

CATEGORIES = ("multi_turn", "translation", "summarization", "qa", "math_reasoning", "rag")
BUILTIN = "builtin"


@dataclasses.dataclass(frozen=True)
class Question:
    """One Spec-Bench question: its user turns in order, and optional reference answers."""

    question_id: int
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None


def builtin_task_path() -> Path:
    """Path of the shipped prompt set (package data)."""
    return Path(__file__).resolve().parent / "data" / "spec_bench_mini.jsonl"


def _str_list(value, field: str, where: str, allow_empty: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"{where}: field {field!r} must be a list of strings, got {value!r}")
    if not value and not allow_empty:
        raise ValueError(f"{where}: field {field!r} must not be empty")
    return tuple(value)


def _parse(line: str, where: str) -> Question:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for field in ("question_id", "category", "turns"):
        if field not in obj:
            raise ValueError(f"{where}: missing field {field!r}")
    qid = obj["question_id"]
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise ValueError(f"{where}: field 'question_id' must be an int, got {qid!r}")
    if not isinstance(obj["category"], str):
        raise ValueError(f"{where}: field 'category' must be a string, got {obj['category']!r}")
    reference = obj.get("reference")
    return Question(
        question_id=qid,
        category=obj["category"],
        turns=_str_list(obj["turns"], "turns", where, allow_empty=False),
        reference=None if reference is None else _str_list(reference, "reference", where, allow_empty=True),
    )


def load_questions(path: str | os.PathLike) -> list[Question]:
    """Every question of a Spec-Bench-format JSONL file, in file order; blank lines are skipped.

    FileNotFoundError names a missing path; a line that is not UTF-8 or not JSON, a missing or
    mistyped field, or a repeated question_id raises a one-line ValueError naming file:line (and
    the field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    questions, seen = [], {}
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:  # decoded line by line, so that bad bytes are reported with their line
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 text ({e})") from None
            if not line.strip():
                continue
            q = _parse(line, f"{path}:{n}")
            if q.question_id in seen:
                raise ValueError(
                    f"{path}:{n}: question_id {q.question_id} repeats line {seen[q.question_id]}"
                )
            seen[q.question_id] = n
            questions.append(q)
    return questions


def load_task(
    name_or_path: str | os.PathLike = BUILTIN,
    categories: Iterable[str] | None = None,
    per_category: int | None = None,
) -> list[Question]:
    """Questions of a task: "builtin" (the shipped set) or a path to any Spec-Bench-format file.

    categories: keep only these (unknown names raise ValueError listing the available ones);
    per_category: keep the first n (>= 1) of each category. File order is preserved.
    """
    path = builtin_task_path() if str(name_or_path) == BUILTIN else Path(name_or_path)
    questions = load_questions(path)
    available = list(dict.fromkeys(q.category for q in questions))
    if categories is not None:
        categories = [categories] if isinstance(categories, str) else list(categories)
        unknown = [c for c in categories if c not in available]
        if unknown:
            raise ValueError(f"unknown categories {unknown} for {path}; available: {available}")
        questions = [q for q in questions if q.category in categories]
    if per_category is not None:
        if isinstance(per_category, bool) or not isinstance(per_category, int) or per_category < 1:
            raise ValueError(f"per_category must be an int >= 1, got {per_category!r}")
        counts: dict[str, int] = {}
        kept = []
        for q in questions:
            counts[q.category] = counts.get(q.category, 0) + 1
            if counts[q.category] <= per_category:
                kept.append(q)
        questions = kept
    return questions
