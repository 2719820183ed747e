"""A synthetic, learnable text preference set built in code (``builtin:synthetic-preferences`` / ``-kto``).

A tiny fixed world (``WORLD``): every object has one true colour (the sky is blue, the car is red, ...). Each prompt
asks for the colour of an object in one of several phrasings; the chosen answer names the true colour, the rejected
answer a wrong one. Preferring the chosen answer needs the object named in the prompt (each true colour is chosen
for its object and rejected for the others), and the rule carries over to held-out pairs (new wrong colours, phrasings and
sizes of the same objects): a tiny Llama trained with DPO for a few dozen steps reaches reward accuracy ≥ 0.9 on the
``test`` split. Words come from ``visalign.testing.tokenizers.DEFAULT_WORDS``, so the tiny word-level tokenizer
never produces ``<unk>``.

Splits ``train`` and ``test`` are disjoint: no (prompt, chosen, rejected) triple appears in both.
"""

from __future__ import annotations

import random

from datasets import Dataset

#: The synthetic world: every object has one true colour.
WORLD = {"sky": "blue", "sun": "yellow", "tree": "green", "cat": "black", "dog": "white", "car": "red",
         "house": "orange"}
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray")
SIZES = ("", "small ", "big ", "large ", "tiny ")
QUESTIONS = (
    "what colour is the {thing} ?",
    "which colour is the {thing} ?",
    "describe the colour of the {thing} .",
    "there is a {thing} in the picture . what colour is it ?",
)
ANSWERS = (" it is {colour} .", " the {thing} is {colour} .")
SPLITS = ("train", "test")


def _all_pairs() -> list[tuple[str, str, str]]:
    """Every (prompt, chosen, rejected) triple, in a fixed order."""
    pairs = []
    for obj, colour in WORLD.items():
        for size in SIZES:
            thing = size + obj
            for question in QUESTIONS:
                for answer in ANSWERS:
                    pairs += [
                        (question.format(thing=thing), answer.format(thing=thing, colour=colour),
                         answer.format(thing=thing, colour=wrong))
                        for wrong in COLOURS
                        if wrong != colour
                    ]
    return pairs


def _split_pairs(split: str, n_train: int, n_test: int, seed: int) -> list[tuple[str, str, str]]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} of the synthetic preference set; available: {list(SPLITS)}")
    pairs = _all_pairs()
    if n_train + n_test > len(pairs):
        raise ValueError(f"n_train + n_test = {n_train + n_test} exceeds the {len(pairs)} distinct synthetic pairs")
    random.Random(seed).shuffle(pairs)
    return pairs[:n_test] if split == "test" else pairs[n_test : n_test + n_train]


def synthetic_preferences(
    split: str = "train", *, n_train: int = 512, n_test: int = 64, seed: int = 0, conversational: bool = False
) -> Dataset:
    """Paired preference data in TRL's format: ``prompt``/``chosen``/``rejected``.

    Plain strings by default, completions starting with the space that separates them from the prompt (TRL's
    convention: ``prompt + chosen`` is the full text; the text pipeline appends EOS); with ``conversational=True``
    each field is a message list (``user`` prompt, ``assistant`` answers) for the tokenizer's chat template.
    """
    rows = _split_pairs(split, n_train, n_test, seed)
    if conversational:
        return Dataset.from_dict({
            "prompt": [[{"role": "user", "content": p}] for p, _, _ in rows],
            "chosen": [[{"role": "assistant", "content": c.strip()}] for _, c, _ in rows],
            "rejected": [[{"role": "assistant", "content": r.strip()}] for _, _, r in rows],
        })
    return Dataset.from_dict({
        "prompt": [p for p, _, _ in rows],
        "chosen": [c for _, c, _ in rows],
        "rejected": [r for _, _, r in rows],
    })


def synthetic_kto(split: str = "train", *, n_train: int = 512, n_test: int = 64, seed: int = 0) -> Dataset:
    """Unpaired (KTO) data: ``prompt``/``completion``/``label``; each pair gives a desirable and an undesirable row,
    shuffled so that neighbouring rows (KTO's mismatched KL pairs) rarely share a prompt."""
    rows = []
    for prompt, chosen, rejected in _split_pairs(split, n_train, n_test, seed):
        rows += [(prompt, chosen, True), (prompt, rejected, False)]
    random.Random(seed + 1).shuffle(rows)
    return Dataset.from_dict({
        "prompt": [p for p, _, _ in rows],
        "completion": [c for _, c, _ in rows],
        "label": [lab for _, _, lab in rows],
    })
