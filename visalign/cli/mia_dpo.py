"""`visalign mia-dpo`: build MIA-DPO multi-image preference data from single-image QA data (Liu et al. 2024,
"MIA-DPO", §3.2–3.3; reference §B.2–B.6) with ``visalign.data.mia_dpo_select.build_mia_dpo``.

    visalign mia-dpo --model llava-hf/llava-1.5-7b-hf --data llava_v1_5_mix665k.json --image-folder data/ \
        --out mia/ [--kinds sequence:2,grid:4,pip] [--layer 16] [--min-perplexity 1.1] [--max-new-tokens 512] \
        [--seed 0] [--limit N] [--device cuda] [--dtype bfloat16] [--trust-remote-code]

``--data``: a JSON list (or ``.jsonl``) of LLaVA-style rows: ``image`` (one path, relative to ``--image-folder``,
default the data file's folder) and either ``conversations`` (LLaVA's ``[{"from": "human", "value": ...},
{"from": "gpt", "value": ...}, ...]``; the first human turn is the question and the gpt turn after it the answer)
or ``question`` and ``answer`` columns; ``id`` is optional (default: the row number). ``<image>`` placeholders are
removed from the question (the augmentations add their own).

Rows without an image (LLaVA's text-only rows), with several images, with an empty question or answer, or with an
unreadable image file are skipped and counted. A row lacking its question/answer columns, a missing image file, a bad
``--kinds`` or ``--layer`` is an error naming the file, row and key, raised before the model loads. ``--limit N``
keeps the first N usable samples.

``--kinds``: comma-separated ``sequence[:N]`` (N = 2..5 images, default 2), ``grid[:N]`` (N = 2, 3, 4, 6, 9,
default 4) and ``pip``; the samples cycle through them. The model is loaded with ``AutoModelForImageTextToText`` and
eager attention (the attention ratio needs the attention maps). Output: ``OUT/mia_dpo.json`` and ``OUT/images/``,
which ``visalign train --config mia-dpo --dataset OUT/mia_dpo.json --image-folder OUT`` trains on. A summary of the
counts goes to stdout.

Exit codes: 0 pairs written, 1 no pair passed the filters (the JSON is written, empty), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from reward_models.inputs import to_rgb
from visalign.data.mia_dpo import IMAGE_PLACEHOLDER
from visalign.data.mia_dpo_select import DEFAULT_THRESHOLDS, DROP_REASONS, SELECTION_JSON, MIASelectConfig, SourceSample
from visalign.data.mia_dpo_select import build_mia_dpo
from visalign.errors import InputError

KIND_DEFAULT_IMAGES = {"sequence": 2, "grid": 4, "pip": 1}
#: skip reason -> text of the summary line.
SKIP_REASONS = {
    "no_image": "no image (text-only row)",
    "multi_image": "several images (MIA-DPO starts from single-image rows)",
    "empty_text": "empty question or answer",
    "unreadable_image": "unreadable image file",
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visalign mia-dpo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="hub id or local folder of the VLM that answers")
    parser.add_argument("--data", required=True, type=Path, help="single-image QA rows: .json list or .jsonl")
    parser.add_argument("--image-folder", type=Path, help="base folder of relative image paths (default: --data's)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (mia_dpo.json and images/)")
    parser.add_argument("--kinds", default="sequence,grid,pip",
                        help="augmentations to cycle through: sequence[:N], grid[:N], pip (default %(default)s)")
    parser.add_argument("--layer", type=int, default=16, help="decoder layer whose attentions give the ratio")
    parser.add_argument("--min-perplexity", type=float, default=1.1, help="keep answers whose greedy PPL exceeds this")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="greedy answer length cap")
    parser.add_argument("--seed", type=int, default=0, help="seed of distractor choice, positions and noise")
    parser.add_argument("--limit", type=int, help="use only the first N usable samples")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1")
    parser.add_argument("--dtype", default="float32", help="model dtype: float32, float16, bfloat16")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model repo's own code")
    return parser


def parse_kinds(spec: str) -> list[tuple[str, int]]:
    """``"sequence:3,grid,pip"`` -> ``[("sequence", 3), ("grid", 4), ("pip", 1)]``, checked against the thresholds."""
    kinds = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, count = item.partition(":")
        if name not in KIND_DEFAULT_IMAGES:
            raise InputError(f"--kinds: unknown augmentation {name!r}; use {', '.join(KIND_DEFAULT_IMAGES)}")
        try:
            images = int(count) if sep else KIND_DEFAULT_IMAGES[name]
        except ValueError:
            raise InputError(f"--kinds: {item!r} must look like {name}:N with N a whole number") from None
        if images not in DEFAULT_THRESHOLDS[name]:
            raise InputError(f"--kinds: {name} takes {sorted(DEFAULT_THRESHOLDS[name])} images; got {images}")
        kinds.append((name, images))
    if not kinds:
        raise InputError("--kinds is empty; use e.g. sequence,grid,pip")
    return kinds


def read_rows(path: Path) -> list[Any]:
    """The rows of a ``.json`` list or a ``.jsonl`` file."""
    if not path.is_file():
        raise InputError(f"--data {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON{'L' if path.suffix == '.jsonl' else ''}: {err}") from err
    if not isinstance(rows, list):
        raise InputError(f"{path} must hold a JSON list of rows, found {type(rows).__name__}")
    return rows


def question_answer(row: dict[str, Any], where: str) -> tuple[str, str]:
    """The question and answer of a row: the first human turn and the gpt turn after it, or ``question``/``answer``."""
    if "conversations" in row:
        turns = row["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) and "from" in t and "value" in t for t in turns):
            raise InputError(f"{where}: 'conversations' must be a list of {{\"from\": ..., \"value\": ...}} turns")
        for first, second in zip(turns, turns[1:]):
            if first["from"] == "human" and second["from"] == "gpt":
                return str(first["value"]), str(second["value"])
        raise InputError(f"{where}: 'conversations' has no human turn followed by a gpt turn")
    missing = [key for key in ("question", "answer") if key not in row]
    if missing:
        raise InputError(f"{where}: missing key {missing[0]!r} (need 'conversations' or 'question' and 'answer')")
    return str(row["question"]), str(row["answer"])


def _safe_id(raw: Any, row_number: int, seen: set[str]) -> str:
    """A file-name-safe id, unique among ``seen`` (the images are saved as ``{id}_{kind}_{k}.png``)."""
    sample_id = re.sub(r"[^A-Za-z0-9._-]", "_", str(raw)) if raw is not None else str(row_number)
    if sample_id in seen:
        sample_id = f"{sample_id}-row{row_number}"
    seen.add(sample_id)
    return sample_id


def iter_samples(rows: list[Any], path: Path, image_folder: Path,
                 skipped: Counter) -> Iterator[SourceSample]:
    """Usable samples of ``rows`` in order; skipped rows are counted in ``skipped`` under ``SKIP_REASONS`` keys."""
    seen: set[str] = set()
    for number, row in enumerate(rows):
        where = f"{path} row {number}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected an object, found {type(row).__name__}")
        image = row.get("image")
        if isinstance(image, list) and len(image) == 1:
            image = image[0]
        if image is None or image == []:
            skipped["no_image"] += 1
            continue
        if isinstance(image, list):
            skipped["multi_image"] += 1
            continue
        question, answer = question_answer(row, where)
        question = question.replace(IMAGE_PLACEHOLDER, "").strip()
        if not question or not answer.strip():
            skipped["empty_text"] += 1
            continue
        file = image_folder / str(image)
        if not file.is_file():
            raise InputError(f"{where}: image file {file} does not exist (key 'image' = {image!r}; "
                             f"relative paths are read from --image-folder {image_folder})")
        try:
            with Image.open(file) as handle:
                picture = to_rgb(handle)
                picture.load()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
            skipped["unreadable_image"] += 1
            continue
        yield SourceSample(picture, question, answer.strip(), _safe_id(row.get("id"), number, seen))


def load_samples(args: argparse.Namespace, kinds: list[tuple[str, int]]) -> tuple[list[SourceSample], int, Counter]:
    """``(samples, rows read, skipped per reason)``; errors when too few samples remain to draw distractors from."""
    rows = read_rows(args.data)
    image_folder = args.image_folder if args.image_folder is not None else args.data.parent
    skipped: Counter = Counter()
    samples = []
    for sample in iter_samples(rows, args.data, image_folder, skipped):
        samples.append(sample)
        if args.limit is not None and len(samples) >= args.limit:
            break
    read = len(samples) + sum(skipped.values())
    needed = max(2 if kind == "pip" else images for kind, images in kinds)
    if len(samples) < needed:
        raise InputError(f"{args.data}: {len(samples)} usable sample(s) of {read} row(s) read "
                         f"({_skip_text(skipped)}); --kinds {args.kinds} needs at least {needed} "
                         "(distractor images come from the other samples)")
    return samples, read, skipped


def _skip_text(skipped: Counter) -> str:
    return ", ".join(f"{SKIP_REASONS[k]}: {n}" for k, n in skipped.items() if n) or "none skipped"


def check_flags(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} exists and is not a folder")


def check_layer(model_id: str, layer: int, trust_remote_code: bool) -> None:
    """``--layer`` must name a decoder layer of the model (read from its config, before the weights load)."""
    from transformers import AutoConfig

    from visalign.models.builtin import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(model_id), trust_remote_code=trust_remote_code)
    text_config = config.get_text_config()
    layers = text_config.num_hidden_layers
    if not 0 <= layer < layers:
        raise InputError(f"--layer {layer} is out of range: {model_id} has {layers} decoder layers (0..{layers - 1})")


def load_model(args: argparse.Namespace):
    """The VLM with eager attention (attention maps are needed) and its processor."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    dtype = getattr(torch, args.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"--dtype {args.dtype!r} is not a torch dtype; use float32, float16 or bfloat16")
    from visalign.models.builtin import resolve_model

    model = AutoModelForImageTextToText.from_pretrained(resolve_model(args.model), dtype=dtype,
                                                        attn_implementation="eager",
                                                        trust_remote_code=args.trust_remote_code)
    processor = AutoProcessor.from_pretrained(resolve_model(args.model), trust_remote_code=args.trust_remote_code)
    return model.to(args.device).eval(), processor


def summary(read: int, skipped: Counter, rows: list[dict[str, Any]], selection: dict[str, Any],
            kinds: list[tuple[str, int]], json_path: Path) -> str:
    """The counts: rows read, skipped per reason, answers generated, pairs kept per augmentation, dropped per
    selection filter."""
    kept = Counter(row["kind"] for row in rows)
    lines = [f"rows read: {read}", f"skipped rows: {sum(skipped.values())}"]
    lines += [f"  {text}: {skipped[key]}" for key, text in SKIP_REASONS.items()]
    lines += [f"answers generated: {selection['generated']}", f"pairs kept: {len(rows)}"]
    lines += [f"  {kind}: {kept[kind]}" for kind in dict.fromkeys(kind for kind, _ in kinds)]
    lines += [f"dropped by the selection filters: {sum(selection['dropped'].values())}"]
    lines += [f"  {text}: {selection['dropped'][key]}" for key, text in DROP_REASONS.items()]
    lines += [f"wrote {json_path} and {json_path.parent / SELECTION_JSON}",
              f"train: visalign train --config mia-dpo --dataset {json_path} --image-folder {json_path.parent}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        check_flags(args)
        kinds = parse_kinds(args.kinds)
        samples, read, skipped = load_samples(args, kinds)
        check_layer(args.model, args.layer, args.trust_remote_code)
        print(f"visalign mia-dpo: {len(samples)} samples; loading {args.model}", file=sys.stderr)
        model, processor = load_model(args)
    except (InputError, OSError, ValueError) as err:
        print(f"visalign mia-dpo: error: {err}", file=sys.stderr)
        return 2
    config = MIASelectConfig(layer=args.layer, max_new_tokens=args.max_new_tokens,
                             min_perplexity=args.min_perplexity)
    print(f"visalign mia-dpo: generating {len(samples)} answers ({args.kinds})", file=sys.stderr)
    json_path = build_mia_dpo(model, processor, samples, args.out, kinds=kinds, config=config, seed=args.seed)
    rows = json.loads(json_path.read_text(encoding="utf-8"))
    selection = json.loads((json_path.parent / SELECTION_JSON).read_text(encoding="utf-8"))
    print(summary(read, skipped, rows, selection, kinds, json_path))
    if not rows:
        print("visalign mia-dpo: no pair passed the selection filters; nothing to train on", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
