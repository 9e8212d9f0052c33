"""A tiny tokenizer built locally, so that tiny random models need no download.

A byte-level BPE (SmolLM2's split: each digit alone, then GPT-2's regex) trained with the
`tokenizers` library on the built-in prompt set rendered as ChatML chats, with SmolLM2's special
tokens at the same ids (<|endoftext|> 0, <|im_start|> 1, <|im_end|> 2) and a ChatML chat template
shaped like SmolLM2's. Training is deterministic (same vocabulary and merges on every machine and
thread count) and takes about 20 ms, so the tokenizer is built in memory on each call, never cached.
"""

from __future__ import annotations

import json

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from specdec.weights.tokenizer import Tokenizer, _with_end_tokens

TINY_VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2, as in SmolLM2
SYSTEM_PROMPT = "You are a helpful AI assistant."
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _training_texts() -> list[str]:
    """Every user turn and reference of the built-in prompt set, as a one-turn ChatML chat."""
    from specdec.tasks import builtin_task_path

    texts = []
    for line in builtin_task_path().read_text(encoding="utf-8").splitlines():
        if line.strip():
            question = json.loads(line)
            for text in [*question["turns"], *(question.get("reference") or [])]:
                texts.append(
                    f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{text}<|im_end|>\n"
                    "<|im_start|>assistant\n"
                )
    return texts


def tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` ids (specials included) with a ChatML chat template.

    BOS is <|im_start|> (not prepended), EOS ids are (<|im_end|>, <|endoftext|>), padding is
    <|im_end|>: the same conventions, and the same special ids, as SmolLM2-Instruct.
    """
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_texts(), trainer)
    im_end = backend.token_to_id("<|im_end|>")
    return Tokenizer(
        backend,
        bos_id=backend.token_to_id("<|im_start|>"),
        eos_ids=_with_end_tokens(backend, [im_end]),
        pad_id=im_end,
        chat_template=CHAT_TEMPLATE,
        add_bos=False,
    )
