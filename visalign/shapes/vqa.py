"""Questions and answers about shapes-world images, for the shipped VLM (``builtin:shapes-llava``) and its DPO pairs.

Three questions, each with one templated answer built from the scene (:class:`~visalign.shapes.world.ShapeSpec`):

==============  ===============================  ==================================================
key             question                         answer
==============  ===============================  ==================================================
``colour``      "what colour is the shape ?"     "it is red ."
``shape``       "what shape is it ?"             "it is a circle ."
``describe``    "describe the image ."           "a small red circle on a white background ."
==============  ===============================  ==================================================

:func:`check_answer` reads an answer back against the scene (colour / shape words, and for ``describe`` every named
attribute), so the correctness of a model's free answer is exact. :func:`preference_pairs` turns a model's answers
into TRL-format vision preference rows: the correct answer is chosen; the rejected one is the model's own answer when
it is wrong (an on-policy hallucination), else a templated hallucination with the colour or shape swapped.

A question may also be asked about one image of a sequence (``examples(..., num_images=(2, 3))``), in MIA-DPO's
format (``visalign.data.mia_dpo.sequence_sample``): ``"Image1: <image> Image2: <image> In Image2, what colour is the
shape ?"``, the other images unrelated scenes. :data:`WORDS` holds the words of those prompts for up to
:data:`MAX_IMAGES` images, as the shapes VLM's whitespace tokenizer splits them (``Image2:``, ``In``, ``Image2,``).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from PIL import Image

from visalign.data.mia_dpo import sequence_sample
from visalign.data.vlm import prompt_to_messages
from visalign.shapes.render import render
from visalign.shapes.world import COLOURS, OPTIONS, SHAPES, VOCABULARY, ShapeSpec, describe, sample_spec

QUESTIONS: dict[str, str] = {
    "colour": "what colour is the shape ?",
    "shape": "what shape is it ?",
    "describe": "describe the image .",
}
DESCRIBED = ("size", "colour", "shape", "background")
#: question key -> the scene attributes its answer must name
ASKED: dict[str, tuple[str, ...]] = {"colour": ("colour",), "shape": ("shape",), "describe": DESCRIBED}
#: the most images a question may be asked among (MIA-DPO's sequences have 2-5), and the sequence lengths below it
MAX_IMAGES = 3
SEQUENCE_LENGTHS: tuple[int, ...] = tuple(range(2, MAX_IMAGES + 1))
#: the words of MIA-DPO's sequence prompts, as whitespace splits them: ``Image{i}:`` labels, ``In Image{k},``
SEQUENCE_WORDS: tuple[str, ...] = ("In", *(f"Image{i}{mark}" for i in range(1, MAX_IMAGES + 1) for mark in ":,"))
#: every word a question or an answer uses (the shapes VLM's tokenizer vocabulary)
WORDS: tuple[str, ...] = tuple(dict.fromkeys(
    [*VOCABULARY, *" ".join(QUESTIONS.values()).split(), "it", "is", ".", *SEQUENCE_WORDS]))


@dataclass(frozen=True)
class VQAExample:
    """A rendered scene, the question asked about it, and the correct answer. With ``distractors`` the question is
    asked about one image of a sequence: the distractors in order with the scene's image at ``position`` (1-based),
    in MIA-DPO's sequence format (module docstring)."""

    image: Image.Image
    spec: ShapeSpec
    question: str  # a key of QUESTIONS
    answer: str
    distractors: tuple[Image.Image, ...] = ()
    position: int = 1

    @property
    def images(self) -> list[Image.Image]:
        """The images shown, in order."""
        return sequence_sample(self.image, list(self.distractors), "", self.position).images

    @property
    def messages(self) -> list[dict]:
        """The chat messages asking the question."""
        if not self.distractors:
            return user_turn(self.question)
        shown = sequence_sample(self.image, list(self.distractors), QUESTIONS[self.question], self.position)
        return prompt_to_messages(shown.question, len(shown.images))


def _check_question(question: str) -> None:
    if question not in QUESTIONS:
        raise KeyError(f"unknown question {question!r}; choose from {sorted(QUESTIONS)}")


def answer_for(spec: ShapeSpec, question: str) -> str:
    """The templated correct answer to ``question`` (a key of :data:`QUESTIONS`) about ``spec``."""
    _check_question(question)
    if question == "colour":
        return f"it is {spec.colour} ."
    if question == "shape":
        return f"it is a {spec.shape} ."
    return describe(spec, DESCRIBED) + " ."


def check_answer(spec: ShapeSpec, question: str, answer: str) -> bool:
    """Whether ``answer`` is right about ``spec``: it names exactly the scene's value of every attribute the question
    asks about (``describe``: size, colour, shape, background) and no other value of those attributes."""
    _check_question(question)
    words = answer.lower().replace(".", " ").split()
    for attribute in ASKED[question]:
        named = {w for w in words if w in OPTIONS[attribute]}
        if named != {getattr(spec, attribute)}:
            return False
    return True


def chance(question: str) -> float:
    """Accuracy of uniform guessing on ``question``: the chance of naming every asked attribute right."""
    _check_question(question)
    return 1.0 / math.prod(len(OPTIONS[attribute]) for attribute in ASKED[question])


def examples(n: int, seed: int, *, resolution: int = 32, questions: Sequence[str] = tuple(QUESTIONS),
             num_images: Sequence[int] = (1,)) -> list[VQAExample]:
    """``n`` seeded examples: scene ``i`` drawn from ``random.Random(seed)``, rendered with seed ``seed * 100_003 + i``,
    asked question ``questions[i % len(questions)]`` among ``num_images[i % len(num_images)]`` images: the others
    are unrelated scenes drawn from the same generator, and the scene's position among them is uniform."""
    if any(not 1 <= count <= MAX_IMAGES for count in num_images):
        raise ValueError(f"num_images must be in 1..{MAX_IMAGES}; got {list(num_images)}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        spec = sample_spec(rng)
        question = questions[i % len(questions)]
        image = render(spec, seed=seed * 100_003 + i, resolution=resolution)
        count = num_images[i % len(num_images)]
        distractors = tuple(render(sample_spec(rng), seed=rng.randrange(2**31), resolution=resolution)
                            for _ in range(count - 1))
        position = rng.randint(1, count) if distractors else 1
        out.append(VQAExample(image, spec, question, answer_for(spec, question), distractors, position))
    return out


def hallucination(spec: ShapeSpec, question: str, rng: random.Random) -> str:
    """A wrong templated answer: another colour (colour, and half the descriptions) or another shape."""
    swap_colour = question == "colour" or (question == "describe" and rng.random() < 0.5)
    if swap_colour:
        wrong = replace(spec, colour=rng.choice([c for c in COLOURS if c != spec.colour]))
    else:
        wrong = replace(spec, shape=rng.choice([s for s in SHAPES if s != spec.shape]))
    return answer_for(wrong, question)


def preference_pairs(items: Sequence[VQAExample], model_answers: Sequence[str], *, seed: int = 0,
                     templates: bool = True) -> tuple[list[dict], Counter]:
    """TRL vision preference rows (``images``, ``prompt``, ``chosen``, ``rejected``, conversational) from each example
    and the model's answer to it: the correct answer is chosen; the model's own answer is rejected when it is wrong
    (an on-policy hallucination). Where the model was right (or said nothing), a templated hallucination
    (:func:`hallucination`) is rejected, or with ``templates=False`` the example is skipped.

    Returns the rows and a ``Counter`` of what became of each example: ``model`` and ``template`` (where the rejected
    answer came from), ``skipped_right`` and ``skipped_empty`` (no row; only with ``templates=False``).
    """
    if len(items) != len(model_answers):
        raise ValueError(f"{len(items)} examples but {len(model_answers)} model answers")
    rng, rows, counts = random.Random(seed), [], Counter()
    for index, (item, said) in enumerate(zip(items, model_answers)):
        if not isinstance(said, str):
            raise TypeError(f"model answer {index} is a {type(said).__name__}, not a string")
        said = said.strip()
        if said and not check_answer(item.spec, item.question, said):
            rejected, source = said, "model"
        elif templates:
            rejected, source = hallucination(item.spec, item.question, rng), "template"
        else:
            counts["skipped_right" if said else "skipped_empty"] += 1
            continue
        counts[source] += 1
        rows.append({
            "images": item.images,
            "prompt": item.messages,
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": item.answer}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
        })
    return rows, counts


def user_turn(question: str) -> list[dict]:
    """The chat messages asking ``question`` (a key of :data:`QUESTIONS`) about one image."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[question]}]}]


def generate_answers(model, processor, items: Sequence[VQAExample], *, batch_size: int = 32,
                     max_new_tokens: int = 12) -> list[str]:
    """Greedy answers of a LLaVA-style ``model`` to each example's question (left-padded batches)."""
    tokenizer = processor.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers = []
    try:
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            texts = [processor.apply_chat_template(item.messages, add_generation_prompt=True) for item in batch]
            inputs = processor(images=[image for item in batch for image in item.images], text=texts, padding=True,
                               return_tensors="pt", add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
            answers += tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return [a.strip() for a in answers]


def accuracy(items: Sequence[VQAExample], answers: Sequence[str]) -> dict[str, float]:
    """Share of right answers per question key (and ``all``)."""
    right: Counter = Counter()
    asked: Counter = Counter()
    for item, said in zip(items, answers):
        ok = check_answer(item.spec, item.question, said)
        for key in (item.question, "all"):
            asked[key] += 1
            right[key] += ok
    return {key: right[key] / asked[key] for key in asked}
