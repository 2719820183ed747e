"""Alignment efficacy: does each method raise the shapes reward of the shipped model? Same pairs, same budget.

For each training seed, every row trains a LoRA on ``builtin:shapes-sd`` from the same on-policy pairs (sampled once
per seed from the base model and labelled by the ``shapes`` reward, as the ``quickstart`` recipe does), with the
quickstart recipe's optimiser, steps, batch and LoRA, then renders the same held-out prompts and seeds as the base
model. A summary per method pools its seeds: mean gain, spread, how many seeds' intervals exclude zero, and the mean
gain of each component of the reward. Columns: the mean ``shapes``
reward before -> after, the gain with its paired bootstrap 95% interval over prompts, the win rate against the base
(strict wins; ties are images the LoRA did not change enough to alter the score) with its interval, and the wall time
of training + rendering.

Rows: Diffusion-DPO (sigmoid, the quickstart's β), the core losses robust (ε 0.1, the quickstart's β; ε 0.05 and
lr 1.5e-4 on rendered pairs: at ε 0.1 its loss keeps widening every margin, and the model drifts) and ipo
(β 100: its target log-ratio margin 1/(2β) = 5e-3; at β 500 and 200 it moved the model by less than +0.015) on the
same log-likelihoods, MaPO (no reference; β_m 0.1, lr 1e-4; 3e-4 on rendered pairs, ``RENDERED``), DCPO-p (the
rejected image conditioned on its prompt with one named attribute changed, ``visalign.shapes.world.perturb_prompt``:
DCPO's perturbed-caption variant; β 500, lr 1e-4) and InPO (DDIM-inversion noise, 10 steps). On sampled pairs MaPO
lowered the reward at every lr tried (1e-3, 1e-4); DCPO-c, the rejected image conditioned on a caption of what it
shows, lowered it at every lr tried, exact captions included; InPO fits its pairs and does not move the held-out
reward (bench/README.md has the search and the reasons measured).

``--pairs rendered`` trains the diffusion rows on the quickstart's rendered pairs instead (``visalign.shapes.pairs``:
each training prompt's scene rendered against 3 near misses, the ``shapes`` reward labelling each, gap > 0.1; an
offline preference data set, as Pick-a-Pic is for Diffusion-DPO): the two images differ only in what was redrawn.
The held-out evaluation is the same. ``--flip-labels RATE`` swaps chosen and rejected in that share of each seed's
pairs (seeded; ``label_flipped`` in their ``captions.jsonl``), the annotator noise robust DPO is made for.

VLM rows (``vlm-dpo``, ``dense-dpo``) align the shipped ``builtin:shapes-llava`` with the notebook's workflow: pairs
from its own answers to 4,096 shape/description questions (correct answer chosen; its own wrong answer, else a templated
hallucination, rejected), LoRA r 16 on every linear layer (vision tower, projector and language model: the model's
shape errors come from what it sees), ``loss_type: [sigmoid, sft]``, lr 1e-3, 600 steps of 16; dense DPO weights the
tokens where the correct answer differs from the rejected one by γ = 1.1 (RLHF-V). Their "reward" is the exactness of
the greedy answer to each of 960 held-out questions (1 right, 0 wrong; ``visalign.shapes.vqa.check_answer``), so the
win rate counts questions the trained model gets right and the base gets wrong. (The first setting, 256 questions,
100 steps and a LoRA on the language model only, moved nothing measurable on 480 held-out questions: −0.023
[−0.081, +0.033] at seed 0.) The ``mia-dpo`` row augments the same kind of single-image training questions (all
three kinds) into MIA-DPO sequences of 2 and 3 images (``MIA_SEQUENCE_IMAGES``; a grid collage or picture-in-picture
of 32-px scenes would shrink each below what the model's 30-px crops resolve), keeps the model's wrong answers about
the referenced image that pass MIA-DPO's filters (``visalign.data.mia_dpo_select.build_mia_dpo``: perplexity > 1.1,
attention ratio of the last decoder layer under the threshold), trains on that JSON with the same settings, and
scores exactness on 960 held-out questions about one image of a sequence of 2 or 3.

    python bench/alignment.py                      # every method, training seeds 0 1 2 (~20 min per seed, 2 CPU cores)
    python bench/alignment.py --methods diffusion-dpo mapo --seeds 0 1 2 3 4
    python bench/alignment.py --pairs rendered --methods diffusion-dpo ipo   # on rendered pairs (~5 min per seed)
    python bench/alignment.py --methods vlm-dpo dense-dpo mia-dpo   # the VLM rows only (~12 min)
    python bench/alignment.py --quick              # reduced Diffusion-DPO only, aesthetic reward (the CI test)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from reward_models.shapes import COMPONENTS
from visalign.config_io import load_config
from visalign.evaluation.generate import load_prompts
from visalign.evaluation.pairs import write_captions
from visalign.evaluation.report import ModelSpec, compare_models
from visalign.recipes import recipe_file
from visalign.shapes.vqa import SEQUENCE_LENGTHS
from visalign.shapes.world import perturb_prompt
from visalign.trainers.diffusion import DCPOConfig, DiffusionConfig, DiffusionTrainer, InPOConfig, MaPOConfig
from visalign.trainers.methods import METHODS as LIBRARY_METHODS
from visalign.trainers.onpolicy import (EVAL_DIR, PAIR_SOURCES, PAIRS_DIR, OnPolicyConfig, describe_pairs,
                                        sample_pairs, summarise)

# method -> (config class, overrides of the shared settings)
METHODS: dict[str, tuple[type, dict]] = {
    "diffusion-dpo": (DiffusionConfig, {}),
    "ipo": (DiffusionConfig, {"loss_type": "ipo", "beta": 100.0}),
    "robust": (DiffusionConfig, {"loss_type": "robust", "label_smoothing": 0.1}),
    "mapo": (MaPOConfig, {"beta": 0.1, "learning_rate": 1e-4}),
    "dcpo": (DCPOConfig, {"beta": 500.0, "learning_rate": 1e-4}),
    "inpo": (InPOConfig, {"inversion_steps": 10}),
}
#: method -> its settings on rendered pairs (``--pairs rendered``) where they differ from its own above: chosen on
#: training seeds 3 and 4, then measured on 0-2 (bench/README.md)
RENDERED: dict[str, dict] = {
    "mapo": {"learning_rate": 3e-4},
    "robust": {"learning_rate": 1.5e-4, "label_smoothing": 0.05},
}
VLM_METHODS = ("vlm-dpo", "dense-dpo", "mia-dpo")
#: MIA-DPO's augmentations here: sequences of as many images as the shapes VLM was trained on (2 and 3; a grid collage
#: or picture-in-picture of 32-px scenes would shrink each scene below what its 30-px crops can see)
MIA_SEQUENCE_IMAGES = SEQUENCE_LENGTHS
#: the VLM rows' data: training questions per seed, held-out questions (960: on 480 an interval was ±0.045 wide, as
#: wide as the gains' spread over training seeds)
VLM_TRAIN_QUESTIONS, VLM_HELD_OUT = 4096, 960
#: the VLM rows' training settings (``VLMDPOConfig`` fields; the LoRA goes on :func:`every_linear_layer`)
VLM_TRAINING = {"lora_r": 16, "lora_alpha": 32, "beta": 0.1, "loss_type": ["sigmoid", "sft"], "learning_rate": 1e-3,
                "lr_scheduler": "constant", "max_steps": 600, "per_device_batch_size": 16}
#: reduced settings of ``--quick`` (and the CI test): fewer prompts and steps, and the reward reduced to its
#: ``aesthetic`` component (large, centred shapes), whose gain is large enough to be resolved at this budget
QUICK = {"num_prompts": 48, "max_steps": 100, "num_eval_prompts": 24, "scorer_args": ["weights={aesthetic: 1.0}"]}
#: the full bench evaluates on more held-out prompts than the quickstart recipe (40), for tighter intervals
FULL = {"num_eval_prompts": 48}
SHARED_FIELDS = {f.name for f in dataclasses.fields(DiffusionConfig)} - {"method"}


def shared_settings(overrides: dict) -> OnPolicyConfig:
    """The quickstart recipe's settings with ``overrides``."""
    with recipe_file("quickstart") as path:
        return load_config(OnPolicyConfig, path, overrides, ignore_keys=("method",))


def read_captions(pairs_dir: Path) -> list[dict]:
    """The rows of a pair folder's ``captions.jsonl`` (written by :func:`visalign.evaluation.pairs.write_captions`)."""
    lines = (pairs_dir / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def add_perturbed_captions(pairs_dir: Path, seed: int) -> None:
    """Per-side captions for DCPO-p: the chosen image keeps its prompt; the rejected one is conditioned on the prompt
    with one named attribute changed (``visalign.shapes.world.perturb_prompt``, seeded by ``seed``)."""
    rows, rng = read_captions(pairs_dir), random.Random(seed)
    for row in rows:
        row.update(caption_chosen=row["caption"], caption_rejected=perturb_prompt(row["caption"], rng))
    write_captions(pairs_dir, rows)


def swap_side(key: str) -> str:
    """``score_chosen`` <-> ``score_rejected`` (and every other per-side key); other keys as they are."""
    for side, other in (("_chosen", "_rejected"), ("_rejected", "_chosen")):
        if key.endswith(side):
            return key.removesuffix(side) + other
    return key


def flip_labels(pairs_dir: Path, rate: float, seed: int) -> int:
    """Swap the chosen and rejected image of each pair with probability ``rate`` (seeded by ``seed``), with its per-side
    fields (scores, seeds, captions), as an annotator who flips labels at that rate would; marks those rows
    ``label_flipped`` and returns how many were flipped."""
    rows, rng, flipped = read_captions(pairs_dir), random.Random(seed), 0
    for i, row in enumerate(rows):
        if rng.random() >= rate:
            continue
        chosen, rejected = pairs_dir / "chosen" / row["file_name"], pairs_dir / "rejected" / row["file_name"]
        parked = chosen.with_name(chosen.name + ".swap")
        chosen.rename(parked)
        rejected.rename(chosen)
        parked.rename(rejected)
        rows[i] = {**{swap_side(key): value for key, value in row.items()}, "label_flipped": True}
        flipped += 1
    write_captions(pairs_dir, rows)
    return flipped


def derived_pairs(pairs_dir: Path, suffix: str, build) -> Path:
    """``pairs_dir`` copied beside itself as ``NAME-suffix`` and changed by ``build(copy)``, once: built aside, then
    renamed, so an interrupted run leaves no half-made folder, and rows that need the same copy share it."""
    dataset = pairs_dir.with_name(f"{pairs_dir.name}-{suffix}")
    if not dataset.exists():
        partial = dataset.with_name(dataset.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(pairs_dir, partial, ignore=shutil.ignore_patterns("candidates"))
        build(partial)
        partial.rename(dataset)
    return dataset


def row_pairs(name: str, pairs_dir: Path, seed: int, flip_rate: float = 0.0) -> Path:
    """The pairs row ``name`` trains on: the shared ones, with ``flip_rate`` of their labels flipped
    (:func:`flip_labels`, ``--flip-labels``), and for DCPO rows with DCPO-p's per-side captions
    (:func:`add_perturbed_captions`)."""
    if flip_rate > 0:
        def flip(folder: Path) -> None:
            print(f"seed {seed}: {flip_labels(folder, flip_rate, seed)} pair labels flipped", flush=True)
        pairs_dir = derived_pairs(pairs_dir, f"flipped-{flip_rate:g}", flip)
    if METHODS[name][0] is DCPOConfig:
        pairs_dir = derived_pairs(pairs_dir, "dcpo", lambda folder: add_perturbed_captions(folder, seed=seed))
    return pairs_dir


def method_overrides(name: str, explicit: frozenset[str] = frozenset(), pair_source: str = "policy") -> dict:
    """Row ``name``'s own settings (``METHODS``, and ``RENDERED`` on rendered pairs) but those given with ``--set``
    (``explicit``), which win."""
    own = {**METHODS[name][1], **(RENDERED.get(name, {}) if pair_source == "rendered" else {})}
    return {key: value for key, value in own.items() if key not in explicit}


def method_config(name: str, shared: OnPolicyConfig, dataset: Path, work: Path,
                  explicit: frozenset[str] = frozenset()) -> DiffusionConfig:
    """The training config of method ``name``: the shared settings, except the fields the method decides otherwise
    than Diffusion-DPO (``visalign.trainers.methods``: MaPO's loss, DCPO's per-side caption columns, InPO's inversion
    noise) unless ``--set`` gave them (``explicit``), then the method's overrides (:func:`method_overrides`)."""
    cls, overrides = METHODS[name][0], method_overrides(name, explicit, shared.pair_source)
    method, dpo = cls().method_spec, LIBRARY_METHODS["diffusion-dpo"]
    own = {key for key, value in method.defaults.items() if dpo.defaults.get(key) != value} - explicit
    values = {k: getattr(shared, k) for k in SHARED_FIELDS - own}
    values.update(overrides, dataset=str(dataset), output_dir=str(work / name), cache_dir=str(work / "cache"))
    return cls(**values)


def run_method(name: str, shared: OnPolicyConfig, pairs_dir: Path, base_images: Path | None, work: Path,
               explicit: frozenset[str] = frozenset(), flip_rate: float = 0.0) -> dict:
    """Train method ``name`` on the shared pairs (``flip_rate`` of their labels flipped), evaluate against the base;
    the row's figures. ``explicit``: the settings given with ``--set``, which win over the row's own."""
    dataset = row_pairs(name, pairs_dir, shared.seed, flip_rate)
    config = method_config(name, shared, dataset, work, explicit)
    eval_dir = work / name / EVAL_DIR
    started = time.perf_counter()
    DiffusionTrainer(config).train()  # into an empty output_dir: the base images are copied in after training
    trained = time.perf_counter()
    if base_images is not None:  # the base model's held-out images are the same for every row: render them once
        shutil.copytree(base_images, eval_dir / "images" / "b")
    prompts = load_prompts(shared.eval_prompts, split=shared.eval_prompts_split, limit=shared.num_eval_prompts)
    report = compare_models(ModelSpec(shared.model, lora=config.output_dir), ModelSpec(shared.model), prompts,
                            [shared.scorer_spec()], eval_dir, num_seeds=shared.eval_seeds, base_seed=shared.eval_seed,
                            settings=shared.generation_settings(), dtype=shared.sample_dtype,
                            batch_size=shared.sample_batch_size,
                            num_resamples=shared.bootstrap_resamples, progress=False)
    return {"method": name, **summarise(report["scorers"][shared.scorer]), "train_s": trained - started,
            "wall_s": time.perf_counter() - started, "eval_images": str(eval_dir / "images" / "b")}


def run_vlm_method(name: str, work: Path, seed: int) -> dict:
    """Align ``builtin:shapes-llava`` with DPO, dense DPO or MIA-DPO on its own mistakes; answer exactness
    before/after. DPO and dense DPO: pairs from its answers to single-image questions, evaluated on held-out ones.
    MIA-DPO: the same kind of source questions augmented into sequences of 2 and 3 images and selected by
    ``build_mia_dpo`` (its answer about the referenced image wrong, the attention ratio under the threshold),
    evaluated on held-out questions about one image of a sequence."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from visalign.data.mia_dpo_select import MIASelectConfig, SourceSample, build_mia_dpo
    from visalign.evaluation.winrate import head_to_head
    from visalign.models.builtin import resolve_model
    from visalign.shapes.vqa import QUESTIONS, check_answer, examples, generate_answers, preference_pairs
    from visalign.trainers.vlm import VLMDPOConfig, VLMDPOTrainer

    path = resolve_model("builtin:shapes-llava")
    # MIA-DPO's selection reads the attention maps, which need eager attention
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    processor = AutoProcessor.from_pretrained(path)
    questions, shown = (tuple(QUESTIONS), MIA_SEQUENCE_IMAGES) if name == "mia-dpo" else (("shape", "describe"), (1,))
    held_out = examples(VLM_HELD_OUT, seed=20_000, questions=questions, num_images=shown)
    train = examples(VLM_TRAIN_QUESTIONS, seed=1 + seed, questions=questions)
    started = time.perf_counter()
    before = generate_answers(model, processor, held_out)
    if name == "mia-dpo":
        layer = model.config.text_config.num_hidden_layers - 1
        samples = [SourceSample(image=item.image, question=QUESTIONS[item.question], answer=item.answer, id=str(i))
                   for i, item in enumerate(train)]
        rows = str(build_mia_dpo(model, processor, samples, work / "mia-data", seed=seed,
                                 kinds=[("sequence", count) for count in MIA_SEQUENCE_IMAGES],
                                 config=MIASelectConfig(layer=layer, max_new_tokens=12)))
        print(f"mia-dpo seed {seed}: {(work / 'mia-data' / 'selection.json').read_text()}", flush=True)
    else:
        rows, _ = preference_pairs(train, generate_answers(model, processor, train))
    args = VLMDPOConfig(output_dir=str(work / name), use_lora=True, **VLM_TRAINING, logging_steps=10, save_steps=0,
                        max_length=None, lora_target_modules=every_linear_layer(model), method=name, report_to=[],
                        seed=seed)
    trainer = VLMDPOTrainer(model=model, args=args, train_dataset=rows, processor=processor)
    trainer.train()
    trained = time.perf_counter()
    after = generate_answers(trainer.accelerator.unwrap_model(trainer.model).eval(), processor, held_out)
    exact = [[[float(check_answer(item.spec, item.question, said))] for item, said in zip(held_out, answers)]
             for answers in (after, before)]
    comparison = head_to_head(exact[0], exact[1], num_resamples=2000)
    return {"method": name, **summarise(comparison.as_dict()), "train_s": trained - started,
            "wall_s": time.perf_counter() - started}


def every_linear_layer(model: torch.nn.Module) -> list[str]:
    """Names of all ``nn.Linear`` layers but the output head: the vision tower, projector and language model."""
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not model.get_output_embeddings()]


def summarise_methods(rows: list[dict]) -> list[dict]:
    """Per method, over its training seeds: the mean gain and its spread (sample std, min, max), how many seeds'
    intervals exclude zero above and below, the mean win rate, train time and component gains."""
    summary = []
    for name in dict.fromkeys(r["method"] for r in rows):
        runs = [r for r in rows if r["method"] == name]
        gains = [r["reward_gain"] for r in runs]
        mean = statistics.fmean(gains)
        std = statistics.stdev(gains) if len(gains) > 1 else 0.0
        average = lambda key: sum(r.get(key, 0.0) for r in runs) / len(runs)  # noqa: E731
        summary.append({"method": name, "seeds": [r["seed"] for r in runs], "mean_gain": mean, "gain_std": std,
                        "gain_min": min(gains), "gain_max": max(gains),
                        "seeds_above_zero": sum(r["reward_gain_ci_low"] > 0 for r in runs),
                        "seeds_below_zero": sum(r["reward_gain_ci_high"] < 0 for r in runs),
                        "win_rate": average("win_rate"), "tie_rate": average("tie_rate"),
                        "train_s": average("train_s"), "settings": runs[0]["settings"],
                        **{f"gain/{c}": average(f"gain/{c}") for c in COMPONENTS if f"gain/{c}" in runs[0]}})
    return summary


def format_summary(summary: list[dict]) -> str:
    lines = ["| method | settings | seeds | mean gain ± std [min, max] | CI > 0 | CI < 0 | win rate | ties | "
             "train s | " + " | ".join(COMPONENTS) + " |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(COMPONENTS)]
    for m in summary:
        parts = [f"{m['gain/' + c]:+.3f}" if f"gain/{c}" in m else "-" for c in COMPONENTS]
        lines.append(f"| {m['method']} | {m['settings']} | {' '.join(map(str, m['seeds']))} | "
                     f"{m['mean_gain']:+.4f} ± {m['gain_std']:.4f} [{m['gain_min']:+.4f}, {m['gain_max']:+.4f}] | "
                     f"{m['seeds_above_zero']}/{len(m['seeds'])} | {m['seeds_below_zero']}/{len(m['seeds'])} | "
                     f"{m['win_rate']:.1%} | {m['tie_rate']:.1%} | {m['train_s']:.0f} | {' | '.join(parts)} |")
    return "\n".join(lines)


def format_rows(rows: list[dict]) -> str:
    lines = ["| method | seed | reward before -> after | gain [95% CI] | win rate [95% CI] | ties | train s | wall s |",
             "| --- | ---: | --- | --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seed']} | {r['reward_before']:.4f} -> {r['reward_after']:.4f} | "
                     f"{r['reward_gain']:+.4f} [{r['reward_gain_ci_low']:+.4f}, {r['reward_gain_ci_high']:+.4f}] | "
                     f"{r['win_rate']:.1%} [{r['win_rate_ci_low']:.1%}, {r['win_rate_ci_high']:.1%}] | "
                     f"{r['tie_rate']:.1%} | {r['train_s']:.0f} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def settings_of(name: str, shared: OnPolicyConfig, explicit: frozenset[str] = frozenset()) -> str:
    """What a row trains with, in a few words, read from the config :func:`method_config` builds for it: loss, β, lr,
    and the other settings the row or ``--set`` changes."""
    if name in VLM_METHODS:
        t = VLM_TRAINING
        return (f"LoRA r{t['lora_r']} on every linear layer, lr {t['learning_rate']:g}, {t['max_steps']} x "
                f"{t['per_device_batch_size']}, β {t['beta']:g}, {' + '.join(t['loss_type'])}"
                + (", γ 1.1" if name == "dense-dpo" else ""))
    config = method_config(name, shared, Path("pairs"), Path("."), explicit)
    loss = config.loss_type if isinstance(config.loss_type, str) else " + ".join(config.loss_type)
    changed = dict.fromkeys([*method_overrides(name, explicit, shared.pair_source), *sorted(explicit)])
    extra = [f"{k} {getattr(config, k) if hasattr(config, k) else getattr(shared, k)}" for k in changed
             if k not in ("loss_type", "beta", "learning_rate")]  # --set keys may be the shared settings' only
    return ", ".join([loss, f"β {config.beta:g}", f"lr {config.learning_rate:g}", *extra])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", choices=[*METHODS, *VLM_METHODS], default=[*METHODS, *VLM_METHODS])
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds: each seed samples its own pairs and "
                        "trains every method once (default 0 1 2; --quick: the recipe's seed)")
    parser.add_argument("--pairs", choices=PAIR_SOURCES, default="policy",
                        help="the diffusion rows' pairs: sampled from the base model (recipe onpolicy's, default) or "
                        "rendered (the quickstart's, visalign.shapes.pairs: each prompt's scene against near misses)")
    parser.add_argument("--flip-labels", type=float, default=0.0, metavar="RATE",
                        help="swap chosen and rejected in this share of each seed's pairs (seeded), as annotators who "
                        "flip labels would: the noise robust DPO is made for (default 0)")
    parser.add_argument("--quick", action="store_true", help="reduced Diffusion-DPO only (CI)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the quickstart recipe for every diffusion row, over the row's own "
                        "(e.g. MaPO's lr 1e-4; repeatable)")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the rows and the per-method summary as JSON")
    args = parser.parse_args(argv)
    if not 0.0 <= args.flip_labels < 0.5:
        parser.error(f"--flip-labels must be in [0, 0.5); got {args.flip_labels}")
    overrides = dict(QUICK if args.quick else FULL)
    overrides.update(item.split("=", 1) for item in args.set)
    explicit = frozenset(item.split("=", 1)[0] for item in args.set)
    methods = ["diffusion-dpo"] if args.quick else args.methods
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-alignment-"))
    shared = shared_settings({**overrides, "pair_source": args.pairs, "output_dir": str(work)})
    seeds = args.seeds or ([shared.seed] if args.quick else [0, 1, 2])
    rows, base_images = [], None
    for seed in seeds:
        seeded = dataclasses.replace(shared, seed=seed, output_dir=str(work / f"seed-{seed}"))
        pairs_dir = Path(seeded.output_dir) / PAIRS_DIR
        if any(name in METHODS for name in methods):
            started = time.perf_counter()
            summary = sample_pairs(seeded, "cuda" if torch.cuda.is_available() else "cpu")
            print(f"seed {seed}: {describe_pairs(summary, seeded)} from {summary['num_prompts']} prompts in "
                  f"{time.perf_counter() - started:.0f}s", flush=True)
        for name in methods:
            if name in VLM_METHODS:
                row = run_vlm_method(name, Path(seeded.output_dir), seed)
            else:
                row = run_method(name, seeded, pairs_dir, base_images, Path(seeded.output_dir), explicit,
                                 args.flip_labels)
                base_images = Path(row.pop("eval_images"))
            diffusion = name in METHODS
            rendered, flipped = args.pairs == "rendered" and diffusion, args.flip_labels if diffusion else 0.0
            settings = settings_of(name, shared, explicit)
            if rendered:
                settings += ", rendered pairs"
            if flipped:
                settings += f", {flipped:.0%} of labels flipped"
            rows.append({**row, "seed": seed, "pairs": "rendered" if rendered else "policy", "flipped_labels": flipped,
                         "settings": settings})
            print(f"{name} seed {seed}: {row['reward_before']:.4f} -> {row['reward_after']:.4f} "
                  f"({row['wall_s']:.0f}s)", flush=True)
    summary = summarise_methods(rows)
    print(f"\ndiffusion rows: builtin:shapes-sd, {shared.max_steps} steps x {shared.per_device_batch_size} pairs, "
          f"LoRA r{shared.lora_r}; pairs: {shared.num_prompts} prompts x {shared.samples_per_prompt} samples per "
          f"training seed; held-out: {shared.num_eval_prompts} prompts x {shared.eval_seeds} seeds (eval seed "
          f"{shared.eval_seed}), {shared.sample_steps} DDIM steps, CFG {shared.sample_guidance}; VLM rows: "
          f"builtin:shapes-llava, answer exactness (module docstring)\n")
    print(format_summary(summary))
    print()
    print(format_rows(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
