"""On-policy preference pairs: sample K images per prompt from a model, score them, keep best vs worst.

Every prompt gets K images (:func:`~visalign.evaluation.generate.generate_images`: fixed per-(prompt, index) seeds,
resumable, kept under ``OUT/candidates`` with their manifest), each scored by the scorer against its prompt. The
best-scoring image becomes ``chosen`` and the worst ``rejected`` (the scorer's direction decides which is best), or,
with ``pairing="all"``, every ordered pair of a prompt's images becomes a pair. A pair whose score gap is not above
``min_gap`` is dropped; a prompt left without a pair (ties always drop, as in
Diffusion-DPO's data, reference diffusion-methods.md §3.3); these are counted and reported. The output is the
paired-folder layout read by ``visalign.data.diffusion.load_preference_pairs``: ``OUT/chosen/NAME.png``,
``OUT/rejected/NAME.png`` (``{prompt:05d}_{chosen k:02d}_{rejected k:02d}.png``) and ``OUT/captions.jsonl`` rows
``{"file_name", "caption", "score_chosen", "score_rejected", "seed_chosen", "seed_rejected"}``;
``OUT/pairs_summary.json`` records the counts, the settings and the scorer's provenance. Scores are the scorer's raw
output (reward-scorers.md §1.6).

This is the sampling-and-labelling step of on-policy preference optimisation (the shapes-world quickstart; SPO,
reference §6.1, forms pairs the same way per denoising step, here per final image).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visalign.evaluation.generate import GenerationSettings, generate_images, load_pipeline, score_samples

SUMMARY = "pairs_summary.json"
CANDIDATES = "candidates"


PAIRINGS = ("best_worst", "all")


def select_pairs(scores: np.ndarray, *, min_gap: float = 0.0, higher_is_better: bool = True,
                 pairing: str = "best_worst") -> tuple[list[tuple[int, int, int]], int]:
    """``scores [P, K]`` -> ``([(prompt, chosen k, rejected k), ...], skipped)``.

    ``best_worst``: per prompt, the best against the worst image (the first index wins equal scores); ``all``: every
    ordered pair of a prompt's images whose scores differ by more than ``min_gap`` (up to K(K-1)/2 pairs per prompt
    from the same samples). Either way a pair needs a score gap above ``min_gap``; ``skipped`` counts the prompts left
    without any pair."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"select_pairs needs scores [prompts, samples >= 2], got shape {scores.shape}")
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0; got {min_gap}")
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}; got {pairing!r}")
    signed = scores if higher_is_better else -scores
    if pairing == "all":
        k = range(scores.shape[1])
        pairs = [(p, i, j) for p in range(len(scores)) for i in k for j in k if signed[p, i] - signed[p, j] > min_gap]
    else:
        best, worst = signed.argmax(axis=1), signed.argmin(axis=1)
        gaps = signed.max(axis=1) - signed.min(axis=1)
        pairs = [(p, int(best[p]), int(worst[p])) for p in range(len(scores)) if gaps[p] > min_gap]
    return pairs, len(scores) - len({p for p, _, _ in pairs})


def check_pair_options(samples_per_prompt: int, min_gap: float, pairing: str) -> None:
    """Raise ``ValueError`` naming the option that cannot form pairs (before any model loads)."""
    if samples_per_prompt < 2:
        raise ValueError(f"samples_per_prompt must be >= 2 to form a pair; got {samples_per_prompt}")
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0; got {min_gap}")
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}; got {pairing!r}")


def empty_pair_sides(out: Path) -> None:
    """Create ``out/chosen`` and ``out/rejected`` empty (a rerun with other settings must not leave stale pairs)."""
    for side in ("chosen", "rejected"):
        shutil.rmtree(out / side, ignore_errors=True)
        (out / side).mkdir(parents=True)


def write_captions(out: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``out/captions.jsonl``, one pair per line."""
    with open(out / "captions.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def write_pairs(out: Path, samples, scores: np.ndarray, pairs: Sequence[tuple[int, int, int]]) -> None:
    """Copy each pair's images into ``out/chosen`` and ``out/rejected`` and write ``out/captions.jsonl``."""
    grid = [samples[p * scores.shape[1]:(p + 1) * scores.shape[1]] for p in range(scores.shape[0])]
    empty_pair_sides(out)
    rows = []
    for p, k_chosen, k_rejected in pairs:
        chosen, rejected = grid[p][k_chosen], grid[p][k_rejected]
        name = f"{p:05d}_{k_chosen:02d}_{k_rejected:02d}.png"
        shutil.copyfile(out / CANDIDATES / chosen.path, out / "chosen" / name)
        shutil.copyfile(out / CANDIDATES / rejected.path, out / "rejected" / name)
        rows.append({"file_name": name, "caption": chosen.prompt, "score_chosen": float(scores[p, k_chosen]),
                     "score_rejected": float(scores[p, k_rejected]), "seed_chosen": chosen.seed,
                     "seed_rejected": rejected.seed})
    write_captions(out, rows)


def generate_preference_pairs(
    model: str,
    prompts: Sequence[str],
    scorer,
    out: str | Path,
    *,
    lora: str | None = None,
    pipeline=None,
    samples_per_prompt: int = 4,
    min_gap: float = 0.0,
    pairing: str = "best_worst",
    seed: int = 0,
    settings: GenerationSettings = GenerationSettings(),
    device: str | torch.device = "cpu",
    dtype: str | None = None,
    batch_size: int = 4,
    score_batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample, score and pair (module docstring) into ``out``; returns the summary also written to ``SUMMARY``.
    ``scorer`` is a loaded ``reward_models`` scorer. Images come from ``pipeline`` when one is given (e.g. the policy
    being trained; ``model`` and ``lora`` then only label them), else from ``model`` with the LoRA folder ``lora``."""
    check_pair_options(samples_per_prompt, min_gap, pairing)
    out = Path(out)
    if pipeline is None:
        pipeline = load_pipeline(model, lora=lora, device=device, dtype=dtype)
    samples = generate_images(pipeline, prompts, out / CANDIDATES, num_seeds=samples_per_prompt, base_seed=seed,
                              settings=settings, model=model, lora=lora, batch_size=batch_size, progress=progress)
    del pipeline
    scores, result = score_samples(scorer, samples, out / CANDIDATES, batch_size=score_batch_size, progress=progress)
    pairs, skipped = select_pairs(scores, min_gap=min_gap, higher_is_better=scorer.info.higher_is_better,
                                  pairing=pairing)
    write_pairs(out, samples, scores, pairs)
    summary = {
        "num_prompts": len(prompts), "samples_per_prompt": samples_per_prompt, "pairs": len(pairs),
        "pairing": pairing, "skipped_small_gap": skipped, "min_gap": min_gap, "model": model, "lora": lora,
        "settings": samples[0].settings, "scorer": scorer.info.name, "scale": scorer.info.formula,
        "mean_candidate_score": float(scores.mean()),
        "mean_gap": float(np.mean([abs(scores[p, c] - scores[p, r]) for p, c, r in pairs])) if pairs else 0.0,
        "provenance": {name: p.as_dict() for name, p in result.provenance.items()},
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
