"""Shapes-world VQA: templated answers, exact answer checking, on-policy preference pairs."""

from __future__ import annotations

import pytest

from visalign.shapes.vqa import QUESTIONS, WORDS, answer_for, check_answer, examples, preference_pairs, user_turn
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
    assert not check_answer(SPEC, "colour", "")
    for ask in (answer_for, lambda spec, question: check_answer(spec, question, "it is red .")):
        with pytest.raises(KeyError, match="unknown question 'size'"):
            ask(SPEC, "size")


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
    with pytest.raises(TypeError, match="model answer 1 is a NoneType"):
        preference_pairs(items, [said[0], None, *said[2:]])


def test_preference_pairs_without_templates_keep_only_the_models_mistakes_and_count_the_rest():
    items = examples(6, seed=11)  # colour, shape, describe, twice
    wrong_colour = next(c for c in ("red", "blue") if c != items[0].spec.colour)
    said = [f"it is {wrong_colour} .", items[1].answer, "a a a", "  ", items[4].answer, items[5].answer]
    rows, counts = preference_pairs(items, said, templates=False)
    assert counts == {"model": 2, "skipped_right": 3, "skipped_empty": 1}
    assert [row["rejected"][0]["content"][0]["text"] for row in rows] == [said[0], "a a a"]
    assert [row["chosen"][0]["content"][0]["text"] for row in rows] == [items[0].answer, items[2].answer]
    templated, counts = preference_pairs(items, said)
    assert len(templated) == 6 and counts == {"model": 2, "template": 4}


def test_templated_hallucinations_are_wrong_and_seeded():
    items = examples(30, seed=13)
    first = preference_pairs(items, [item.answer for item in items], seed=4)[0]
    again = preference_pairs(items, [item.answer for item in items], seed=4)[0]
    rejected = [row["rejected"][0]["content"][0]["text"] for row in first]
    assert rejected == [row["rejected"][0]["content"][0]["text"] for row in again]
    assert not any(check_answer(item.spec, item.question, text) for item, text in zip(items, rejected))
    assert all(set(text.split()) <= set(WORDS) for text in rejected)


def test_sequence_examples_ask_about_the_scene_at_its_position_in_mia_dpos_format():
    items = examples(12, seed=17, num_images=(2, 3))
    assert [len(item.images) for item in items] == [2, 3] * 6
    assert {item.position for item in examples(60, seed=17, num_images=(3,))} == {1, 2, 3}
    again = examples(12, seed=17, num_images=(2, 3))
    for item, same in zip(items, again):
        assert 1 <= item.position <= len(item.images) and item.images[item.position - 1] is item.image
        assert [i.tobytes() for i in item.images] == [i.tobytes() for i in same.images]
        parts = item.messages[0]["content"]
        assert sum(part["type"] == "image" for part in parts) == len(item.images)
        text = " ".join(part["text"] for part in parts if part["type"] == "text")
        labels = [f"Image{k}:" for k in range(1, len(item.images) + 1)]
        assert text.split() == [*labels, "In", f"Image{item.position},", *QUESTIONS[item.question].split()]
        assert set(text.split()) <= set(WORDS)  # the shapes VLM's word-level tokenizer knows every word
    # single-image examples are the ones they were before sequences existed: one image, the plain question
    single = examples(3, seed=17)
    assert [len(item.images) for item in single] == [1, 1, 1] and single[0].messages == user_turn("colour")
    with pytest.raises(ValueError, match=r"num_images must be in 1..3; got \[2, 4\]"):
        examples(2, seed=0, num_images=(2, 4))


def test_preference_rows_of_sequence_examples_carry_every_image_and_the_referencing_prompt():
    items = examples(4, seed=19, num_images=(3,))
    rows, counts = preference_pairs(items, [item.answer for item in items])
    assert counts == {"template": 4}
    for item, row in zip(items, rows):
        assert row["images"] == item.images and len(row["images"]) == 3 and row["prompt"] == item.messages
