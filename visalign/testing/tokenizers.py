"""Word-level tokenizers built in code: no hub download, real ``PreTrainedTokenizerFast`` objects.

They save and load with ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` like any hub tokenizer, so tests
exercise the real loading paths (see ``shared/reference/tiny-models.md``).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}

#: A small English vocabulary shared by the tiny text, VLM and text-to-image models.
DEFAULT_WORDS: tuple[str, ...] = (
    "a", "an", "the", "is", "are", "of", "on", "in", "and", "what", "which", "colour", "color", "shape", "image",
    "describe", "picture", "photo", "background", "this", "there", "it", "with", "small", "large", "big", "tiny",
    "red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray",
    "circle", "square", "triangle", "star", "cross", "left", "right", "top", "bottom", "center",
    "user", "assistant", "system", ":", "?", ".", ",", "!", "yes", "no", "good", "bad", "answer", "question",
    "cat", "dog", "car", "tree", "house", "sky", "sun", "one", "two", "three", "hello", "world",
)


def word_level_tokenizer(
    words: Iterable[str] = DEFAULT_WORDS,
    *,
    extra_special_tokens: Iterable[str] = (),
    model_max_length: int = 256,
    chat_template: str | None = None,
) -> PreTrainedTokenizerFast:
    """A whitespace-split word-level tokenizer with ``<pad> <unk> <s> </s>`` at ids 0..3.

    ``extra_special_tokens`` (e.g. ``"<image>"``) are added as special tokens after the words, so they are never
    split and keep stable ids.
    """
    vocab: dict[str, int] = {}
    for tok in [*SPECIAL_TOKENS.values(), *words, *extra_special_tokens]:
        vocab.setdefault(tok, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=model_max_length, **SPECIAL_TOKENS)
    extras = list(extra_special_tokens)
    if extras:
        tok.add_special_tokens({"additional_special_tokens": extras})
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def clip_style_tokenizer(
    words: Iterable[str] = DEFAULT_WORDS, *, model_max_length: int = 77
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer that frames text the way CLIP's tokenizer does, for CLIP text encoders.

    Like CLIP's BPE tokenizer it lowercases, splits punctuation off words and wraps every text as
    ``<s> ... </s>``; truncation to ``model_max_length`` (77, CLIP's context) keeps the closing ``</s>``. A
    ``CLIPTextModel`` whose ``eos_token_id`` is this tokenizer's ``eos_token_id`` therefore pools the hidden state at
    the end of the text, whatever the padding (pad id 0, as in SD2/SDXL's second tokenizer and open_clip).
    """
    tok = word_level_tokenizer(words, model_max_length=model_max_length)
    backend = tok.backend_tokenizer
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    bos, eos = tok.bos_token, tok.eos_token
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, tok.bos_token_id), (eos, tok.eos_token_id)],
    )
    return tok


#: A minimal chat template in the spirit of the hub's: ``user: ...`` / ``assistant: ... </s>`` turns.
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }} : "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %} </s>{% endif %} "
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
