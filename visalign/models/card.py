"""Model cards (``README.md``) of trained transformers models and adapters, and the results section every card gets.

The card's code runs as written: it loads from the folder the run wrote (as the run named it) and, for a
``builtin:NAME`` base, through ``visalign.models.builtin.resolve_model`` (transformers and diffusers take no
``builtin:`` ids). It replaces the template PEFT writes, whose ``base_model`` is the absolute path the base was loaded
from. The run's metrics are added as a ``## Results`` section once training (and any evaluation) is over.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visalign.models.builtin import is_builtin

CARD = "README.md"


def base_model_code(base_model: str) -> tuple[str, str]:
    """``(import lines, expression)`` loading ``base_model`` by ``from_pretrained``: a built-in goes through
    ``resolve_model``."""
    if is_builtin(base_model):
        return "from visalign.models.builtin import resolve_model\n", f"resolve_model({base_model!r})"
    return "", repr(base_model)


def front_matter(base_model: str, library: str, tags: list[str]) -> str:
    """Hugging Face card metadata; ``base_model`` only when it is a hub id (not a built-in or a local path)."""
    base = "" if is_builtin(base_model) or Path(base_model).exists() else f"base_model: {base_model}\n"
    return f"---\n{base}library_name: {library}\ntags:\n" + "".join(f"- {tag}\n" for tag in tags) + "---\n"


def settings_table(settings: Mapping[str, Any]) -> str:
    rows = "".join(f"| `{key}` | `{value}` |\n" for key, value in settings.items() if value is not None)
    return f"| key | value |\n| --- | --- |\n{rows}"


def write_transformers_card(output_dir: str | Path, *, base_model: str, auto_class: str, method: str, lora: bool,
                            settings: Mapping[str, Any]) -> Path:
    """Write ``output_dir/README.md`` for a ``save_pretrained`` model (``lora``: a PEFT adapter over ``base_model``),
    loaded with transformers' ``auto_class`` (``AutoModelForCausalLM``, ``AutoModelForImageTextToText``)."""
    folder = str(output_dir)
    if lora:
        imports, base = base_model_code(base_model)
        load = (f"from peft import PeftModel\nfrom transformers import {auto_class}\n{imports}\n"
                f"model = {auto_class}.from_pretrained({base})\nmodel = PeftModel.from_pretrained(model, {folder!r})")
    else:
        load = f"from transformers import {auto_class}\n\nmodel = {auto_class}.from_pretrained({folder!r})"
    tags = ["visalign", method] + (["lora", "peft"] if lora else [])
    text = (f"{front_matter(base_model, 'peft' if lora else 'transformers', tags)}\n"
            f"# {method} {'LoRA adapter' if lora else 'fine-tune'} of {base_model}\n\n"
            f"Trained with visalign (`method: {method}`) on preference pairs. The full resolved config is in "
            f"`config.yaml`.\n\n## Use\n\n```python\n{load}\n```\n\n## Training settings\n\n"
            f"{settings_table(settings)}")
    path = Path(output_dir) / CARD
    path.write_text(text, encoding="utf-8")
    return path


def write_card_results(output_dir: str | Path, metrics: Mapping[str, Any], *, title: str = "Results") -> None:
    """Replace (or add) the ``## {title}`` section of ``output_dir/README.md`` with a table of ``metrics``."""
    path = Path(output_dir) / CARD
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    head, marker, rest = text.partition(f"\n## {title}\n")
    tail = rest[rest.find("\n## "):] if marker and "\n## " in rest else ""
    rows = "".join(f"| `{key}` | {_number(value)} |\n" for key, value in metrics.items())
    path.write_text(f"{head.rstrip()}\n\n## {title}\n\n| metric | value |\n| --- | --- |\n{rows}{tail}",
                    encoding="utf-8")


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
