"""Prompt generators for self-distillation: the kinds of text a drafter meets, written by the target.

Each generator builds ``n`` prompts of one category in the style of a public benchmark, and
fills them with content the target writes itself (``write``: a batched call of the target at
temperature 0.8), so no external text, and none of the evaluation prompts, is needed:

- chat: user messages the target writes from the opening of a user turn (MT-Bench-like);
- translation: sentences the target writes, to translate into another language (WMT);
- summarization: news reports the target writes, to summarize (CNN/DailyMail);
- qa: factual questions the target asks (Natural Questions);
- math: word problems the target writes around given numbers, to solve step by step (GSM8K);
- rag: a passage and a question about it, both written by the target (retrieval-augmented QA).

Topics and numbers come from ``rng`` (a numpy Generator), so a shard's prompts depend only on
its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np


class Write(Protocol):
    """The target writing content (sampled; every call draws fresh samples)."""

    def __call__(self, requests: Sequence[str], max_tokens: int) -> list[str]:
        """The target's answers to chat requests."""

    def user_messages(self, n: int, max_tokens: int) -> list[str]:
        """n messages the target writes from the opening of a user turn."""


TOPICS = (
    "volcanoes",
    "honey bees",
    "the printing press",
    "black holes",
    "coral reefs",
    "the Roman Empire",
    "electric cars",
    "photosynthesis",
    "jazz music",
    "the stock market",
    "vaccines",
    "glaciers",
    "chess",
    "the internet",
    "rainforests",
    "ancient Egypt",
    "solar panels",
    "sleep",
    "coffee",
    "the human heart",
    "earthquakes",
    "democracy",
    "origami",
    "the Moon",
    "bread baking",
    "machine learning",
    "recycling",
    "the Olympic Games",
    "whales",
    "the French Revolution",
    "climate change",
    "bicycles",
    "vitamins",
    "the Silk Road",
    "deserts",
    "trains",
    "painting",
    "antibiotics",
    "space telescopes",
    "football",
    "bridges",
    "the immune system",
    "tea",
    "wind turbines",
    "libraries",
    "mountains",
    "the water cycle",
    "smartphones",
    "elephants",
    "public transport",
    "gardening",
    "dinosaurs",
    "the piano",
    "hurricanes",
    "cheese making",
    "the Renaissance",
    "batteries",
    "volunteering",
    "rivers",
    "video games",
    "architecture",
    "nutrition",
    "the ocean floor",
    "airplanes",
    "birds migrating",
    "cryptography",
    "marathons",
    "the Amazon river",
    "robots",
    "museums",
    "pollution",
    "the solar system",
    "forests",
    "budgeting",
    "music festivals",
    "the brain",
    "languages",
    "farming",
    "penguins",
    "cities",
)
LANGUAGES = ("French", "German", "Spanish", "Italian", "Portuguese", "Dutch")


def _topics(rng: np.random.Generator, n: int) -> list[str]:
    return [TOPICS[i] for i in rng.integers(0, len(TOPICS), n)]


def _or(text: str, fallback: str) -> str:
    return text.strip() or fallback


def chat(write: Write, rng: np.random.Generator, n: int) -> list[str]:
    del rng  # the target's sampling varies the messages
    return [_or(t, "Hello! What can you help me with?") for t in write.user_messages(n, 48)]


def translation(write: Write, rng: np.random.Generator, n: int) -> list[str]:
    topics, languages = _topics(rng, n), rng.choice(LANGUAGES, n)
    texts = write([f"Write two sentences about {t}." for t in topics], 64)
    return [
        f"Translate the following text into {lang}.\n\n{_or(text, t)}"
        for t, lang, text in zip(topics, languages, texts, strict=True)
    ]


def summarization(write: Write, rng: np.random.Generator, n: int) -> list[str]:
    topics = _topics(rng, n)
    articles = write([f"Write a short news report about {t}." for t in topics], 160)
    return [
        f"Summarize the following article in two sentences.\n\n{_or(a, t)}"
        for t, a in zip(topics, articles, strict=True)
    ]


def qa(write: Write, rng: np.random.Generator, n: int) -> list[str]:
    topics = _topics(rng, n)
    questions = write(
        [f"Ask one short factual question about {t}. Reply with the question only." for t in topics], 40
    )
    return [_or(q, f"What is {t}?") for t, q in zip(topics, questions, strict=True)]


def math(write: Write, rng: np.random.Generator, n: int) -> list[str]:
    topics, numbers = _topics(rng, n), rng.integers(2, 60, (n, 2))
    problems = write(
        [
            f"Write a short math word problem about {t} that uses the numbers {a} and {b}. Do not solve it."
            for t, (a, b) in zip(topics, numbers, strict=True)
        ],
        80,
    )
    return [
        f"{_or(p, f'What is {a} times {b}?')}\n\nSolve the problem step by step and give the final answer."
        for p, (a, b) in zip(problems, numbers, strict=True)
    ]


def rag(write: Write, rng: np.random.Generator, n: int) -> list[str]:
    topics = _topics(rng, n)
    passages = [
        _or(p, t)
        for p, t in zip(
            write([f"Write a short encyclopedia paragraph about {t}." for t in topics], 128),
            topics,
            strict=True,
        )
    ]
    questions = write(
        [
            f"{p}\n\nAsk one question that the paragraph above answers. Reply with the question only."
            for p in passages
        ],
        40,
    )
    return [
        f"Answer the question using only the passage.\n\nPassage: {p}\n\nQuestion: {_or(q, f'What is {t}?')}"
        for p, q, t in zip(passages, questions, topics, strict=True)
    ]


GENERATORS: dict[str, Callable[[Write, np.random.Generator, int], list[str]]] = {
    "chat": chat,
    "translation": translation,
    "summarization": summarization,
    "qa": qa,
    "math": math,
    "rag": rag,
}
