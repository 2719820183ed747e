"""Rendered preference pairs: an offline preference data set for the shapes world, as Pick-a-Pic is for
Diffusion-DPO (Wallace et al. 2023, §5: pairs of images of one caption from other generators, labelled by people).

For each prompt the scene it describes (its unnamed attributes drawn: :func:`~visalign.shapes.world.complete`) is
rendered beside ``near_misses`` renders of that scene with each attribute redrawn with probability ``probability``
(:func:`~visalign.shapes.world.perturb`). The ``shapes`` reward scores every render against the prompt, and each
(scene, near miss) becomes a pair when their scores differ by more than ``min_gap``, the higher-scoring image chosen
(a near miss can win: a redrawn attribute the prompt does not name may raise the aesthetic component); equal or close
scores are dropped and counted, as in :func:`visalign.evaluation.pairs.generate_preference_pairs`.

The folder has that function's layout (``chosen/``, ``rejected/``, ``captions.jsonl``, ``pairs_summary.json``), read
by ``visalign.data.diffusion.load_preference_pairs``, with one caption per pair: the prompt (a ``captions.jsonl`` row
with per-side ``caption_chosen``/``caption_rejected`` would make every trainer condition each image on its own
caption, DCPO's way). Each row names what the rejected image shows in ``depicted_rejected`` (the attributes the
prompt names; exact, since the scene is known), for inspection.

Unlike on-policy pairs, both images are clean renders, and the two differ only in the attributes redrawn: the pair
says exactly what the prompt asks for. The price is that the chosen image is not one the model drew.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visalign.evaluation.pairs import SUMMARY, empty_pair_sides, write_captions
from visalign.shapes.render import render_batch
from visalign.shapes.world import ATTRIBUTES, complete, describe, parse_prompt, perturb


def render_preference_pairs(prompts: Sequence[str], out: str | Path, *, seed: int = 0, near_misses: int = 3,
                            probability: float = 0.3, min_gap: float = 0.1, resolution: int = 32,
                            scorer=None) -> dict[str, Any]:
    """Write the rendered pairs of ``prompts`` (module docstring) into ``out``; returns the summary also written to
    ``pairs_summary.json``. ``scorer``: a loaded ``reward_models`` scorer (default: ``shapes``). Seeded by ``seed``:
    scenes, near misses and render seeds come from ``random.Random(seed)``."""
    if near_misses < 1:
        raise ValueError(f"near_misses must be >= 1; got {near_misses}")
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0; got {min_gap}")
    if scorer is None:
        from reward_models import load_scorer

        scorer = load_scorer("shapes")
    out, rng = Path(out), random.Random(seed)
    empty_pair_sides(out)
    rows, dropped, sign = [], 0, 1.0 if scorer.info.higher_is_better else -1.0
    for index, prompt in enumerate(prompts):
        asked = parse_prompt(prompt)
        named = [a for a in ATTRIBUTES if getattr(asked, a) is not None]
        scene = complete(asked, rng)
        specs = [scene] + [perturb(scene, rng, probability) for _ in range(near_misses)]
        seeds = [rng.randrange(2**31) for _ in specs]
        images = render_batch(specs, seeds, resolution=resolution)
        scores = [float(s) for s in scorer.score(list(images.float() / 255), [prompt] * len(specs)).scores]
        for k in range(1, len(specs)):
            if abs(scores[0] - scores[k]) <= min_gap:
                dropped += 1
                continue
            chosen, rejected = (0, k) if sign * (scores[0] - scores[k]) > 0 else (k, 0)
            name = f"{index:05d}_{chosen:02d}_{rejected:02d}.png"
            for side, j in (("chosen", chosen), ("rejected", rejected)):
                Image.fromarray(images[j].permute(1, 2, 0).numpy()).save(out / side / name)
            rows.append({"file_name": name, "caption": prompt, "score_chosen": scores[chosen],
                         "score_rejected": scores[rejected], "seed_chosen": seeds[chosen],
                         "seed_rejected": seeds[rejected], "depicted_rejected": describe(specs[rejected], named)})
    write_captions(out, rows)
    summary = {"num_prompts": len(prompts), "near_misses": near_misses, "probability": probability,
               "pairs": len(rows), "dropped_small_gap": dropped, "min_gap": min_gap, "resolution": resolution,
               "seed": seed, "scorer": scorer.info.name, "source": "rendered",
               "mean_gap": float(np.mean([abs(r["score_chosen"] - r["score_rejected"]) for r in rows])) if rows else 0.0}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
