"""Shapes-world VQA: templated answers, exact answer checking, on-policy preference pairs."""

from __future__ import annotations

import pytest

from visalign.shapes.vqa import QUESTIONS, WORDS, answer_for, check_answer, examples, preference_pairs
from visalign.shapes.world import ShapeSpec

SPEC = ShapeSpec("circle", "red", "small", "center", "white")


def test_answers_and_their_check():
    assert answer_for(SPEC, "colour") == "it is red ."
    assert answer_for(SPEC, "shape") == "it is a circle ."
    assert answer_for(SPEC, "describe") == "a small red circle on a white background ."
    for question in QUESTIONS:
        assert check_answer(SPEC, question, answer_for(SPEC, question))
    assert not check_answer(SPEC, "colour", "it is blue .")
    assert not check_answer(SPEC, "colour", "it is red blue .")  # naming a second colour is wrong too
    assert not check_answer(SPEC, "shape", "it is a square .")
    assert not check_answer(SPEC, "describe", "a large red circle on a white background .")
    assert not check_answer(SPEC, "describe", "a small red circle")  # background missing
    assert check_answer(SPEC, "colour", "red")
    with pytest.raises(KeyError, match="unknown question"):
        answer_for(SPEC, "size")


def test_every_answer_word_is_in_the_vocabulary():
    for item in examples(30, seed=3):
        assert set(item.answer.split()) <= set(WORDS)
    assert set(" ".join(QUESTIONS.values()).split()) <= set(WORDS)


def test_examples_are_seeded_and_cycle_questions():
    a, b = examples(6, seed=5), examples(6, seed=5)
    assert [x.answer for x in a] == [x.answer for x in b] and a[0].image.tobytes() == b[0].image.tobytes()
    assert [x.question for x in a] == ["colour", "shape", "describe"] * 2
    assert all(check_answer(x.spec, x.question, x.answer) for x in a)


def test_preference_pairs_reject_the_models_own_mistake_else_a_template():
    items = examples(4, seed=7, questions=("shape",))
    wrong = next(s for s in ("circle", "square") if s != items[0].spec.shape)
    said = [f"it is a {wrong} .", items[1].answer, "", items[3].answer]
    rows, sources = preference_pairs(items, said)
    assert sources == {"model": 1, "template": 3}
    assert rows[0]["rejected"][0]["content"][0]["text"] == said[0]
    for item, row in zip(items, rows):
        assert row["chosen"][0]["content"][0]["text"] == item.answer
        rejected = row["rejected"][0]["content"][0]["text"]
        assert not check_answer(item.spec, "shape", rejected)
        assert row["images"] == [item.image] and row["prompt"][0]["content"][0] == {"type": "image"}
    with pytest.raises(ValueError, match="4 examples but 3"):
        preference_pairs(items, said[:3])
