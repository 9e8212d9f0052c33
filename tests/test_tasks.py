"""Prompt sets: the built-in Spec-Bench-format file, filtering, and errors naming file:line."""

from __future__ import annotations

import json

import pytest

from specdec import tasks
from specdec.tasks import CATEGORIES, Question, load_questions, load_task


def test_builtin_file_shape():
    qs = load_task("builtin")
    assert load_task() == qs and load_questions(tasks.builtin_task_path()) == qs
    assert CATEGORIES == ("multi_turn", "translation", "summarization", "qa", "math_reasoning", "rag")
    assert {c: sum(q.category == c for q in qs) for c in CATEGORIES} == dict.fromkeys(CATEGORIES, 5)
    assert len(qs) == 30
    assert len({q.question_id for q in qs}) == 30
    for q in qs:
        assert isinstance(q, Question) and isinstance(q.turns, tuple) and all(t.strip() for t in q.turns)
        assert len(q.turns) == (2 if q.category == "multi_turn" else 1)
        assert (
            len(" ".join(q.turns).split()) < 260
        )  # well under 400 tokens (checked exactly in the slow test)


def test_builtin_prompts_have_their_category_shape():
    qs = load_task()
    for q in qs:
        text = q.turns[0]
        if q.category == "summarization":
            source = text.split("\n\n", 1)[1]
            assert 120 <= len(source.split()) <= 250
        elif q.category == "rag":
            assert text.count("Passage ") in (2, 3) and "\n\nQuestion: " in text
        elif q.category == "translation":
            assert text.startswith("Translate ") and (" to English: " in text or " to German: " in text)
    assert any(q.reference for q in qs) and all(q.reference is None or q.reference for q in qs)


def test_filter_categories_and_per_category():
    rag = load_task(categories=["rag"])
    assert len(rag) == 5 and {q.category for q in rag} == {"rag"}
    two = load_task(categories=("qa", "translation"), per_category=2)
    assert [q.category for q in two] == ["translation", "translation", "qa", "qa"]  # file order kept
    assert load_task(categories="qa") == load_task(categories=["qa"])
    firsts = load_task(per_category=1)
    assert [q.category for q in firsts] == list(CATEGORIES)
    assert firsts[0] == load_task(categories=["multi_turn"])[0]
    with pytest.raises(ValueError, match=r"unknown categories \['coding'\].*available: \['multi_turn'"):
        load_task(categories=["coding"])
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="per_category"):
            load_task(per_category=bad)


def test_spec_bench_format_file_with_extra_fields(tmp_path):
    # Like Spec-Bench's question.jsonl: required fields, sometimes "reference", plus fields we ignore.
    lines = [
        {
            "question_id": 81,
            "category": "writing",
            "turns": ["Write a poem.", "Shorter, please."],
            "extra": 1,
        },
        {"question_id": 101, "category": "math", "turns": ["What is 3 + 4?"], "reference": ["7"]},
        {"question_id": 7, "category": "writing", "turns": ["A limerick."], "cluster": "x", "reference": []},
    ]
    path = tmp_path / "question.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    qs = load_task(path)
    assert qs == [
        Question(81, "writing", ("Write a poem.", "Shorter, please.")),
        Question(101, "math", ("What is 3 + 4?",), ("7",)),
        Question(7, "writing", ("A limerick.",), ()),
    ]
    assert [q.question_id for q in load_task(str(path), categories=["writing"], per_category=1)] == [81]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"category": "qa", "turns": ["q"]}', "missing field 'question_id'"),
        ('{"question_id": 2, "turns": ["q"]}', "missing field 'category'"),
        ('{"question_id": 2, "category": "qa"}', "missing field 'turns'"),
        ('{"question_id": "2", "category": "qa", "turns": ["q"]}', "field 'question_id' must be an int"),
        ('{"question_id": 2, "category": "qa", "turns": "q"}', "field 'turns' must be a list of strings"),
        ('{"question_id": 2, "category": "qa", "turns": []}', "field 'turns' must not be empty"),
        ('{"question_id": 2, "category": "qa", "turns": ["q"], "reference": [1]}', "field 'reference'"),
        ('{"question_id": 1, "category": "qa", "turns": ["again"]}', "question_id 1 repeats line 1"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question_id": 1, "category": "qa", "turns": ["ok"]}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"bad\.jsonl:2: .*{message}"):
        load_questions(path)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        load_task(missing)


@pytest.mark.slow
def test_builtin_prompts_fit_in_400_tokens(smollm2_gguf):
    from specdec.weights.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(smollm2_gguf)
    for q in load_task():
        n = len(tok.encode("\n".join(q.turns)))
        assert n < 400, (q.question_id, n)
