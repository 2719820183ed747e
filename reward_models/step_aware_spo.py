"""Convert SPO's released step-aware preference models into a ``step-aware`` scorer folder.

SPO (Liang et al., CVPR 2025, arXiv 2406.04314) releases its SPMs as one torch state dict each
(``SPO-Diffusion-Models/Step-Aware_Preference_Models``: ``sd-v1-5_step-aware_preference_model.bin``,
``sdxl_step-aware_preference_model.bin``; a self-trained SPM's ``final_ckpt.bin`` is the same), keyed as its
``StepAwarePreferenceModel`` (``model.`` + its ``HFTimeConditionedCLIPModel``, ``RockeyCoss/SPO``
``spo/preference_models/models/time_conditioned_clip.py``). Its CLIP keys are transformers' ``CLIPModel`` keys; the
step modules map onto :class:`~reward_models.step_aware.StepModules` as

    t_embedder.mlp.{0,2}.*                               -> embedder.{0,2}.*
    vision_model.encoder.layers.<i>.adaLN_modulation.1.*  -> layers.<i>.*
    vision_model.adaLN_modulation.1.*                     -> pooled.*

and the forward is the same maths (the ``SiLU`` before each modulation is ``StepModules.condition``'s). The file is
read with ``torch.load(weights_only=True)`` and loaded strictly: every key must land, except the position-id buffers
older transformers saved, which must then equal the model's. The CLIP architecture, tokenizer and image processor come
from ``clip``, the PickScore checkpoint the SPM was trained from (``yuvalkirstain/PickScore_v1``, a local copy offline).

    python -m reward_models.step_aware_spo sd-v1-5_step-aware_preference_model.bin yuvalkirstain/PickScore_v1 out/
    # then: load_scorer("step-aware", model="out/")
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .step_aware import StepAwareScorer
from .weights import load_strict, read_state_dict

#: SPO key (after the ``model.`` prefix) -> step-module key
_STEP_KEYS = (
    (re.compile(r"^t_embedder\.mlp\.(\d+)\.(weight|bias)$"), r"embedder.\1.\2"),
    (re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.adaLN_modulation\.1\.(weight|bias)$"), r"layers.\1.\2"),
    (re.compile(r"^vision_model\.adaLN_modulation\.1\.(weight|bias)$"), r"pooled.\1"),
)
#: buffers transformers < 4.31 saved with the weights; accepted only when equal to the model's
_BUFFERS = re.compile(r"^(text_model|vision_model)\.embeddings\.position_ids$")


def split_spo_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(clip_state, step_state)`` of an SPO SPM state dict (the ``model.`` prefix optional, all or none)."""
    prefixed = [key.startswith("model.") for key in state]
    if any(prefixed) and not all(prefixed):
        raise ValueError("SPO checkpoint: some keys start with 'model.' and some do not; first without: "
                         f"{next(k for k in state if not k.startswith('model.'))}")
    clip, step = {}, {}
    for key, value in state.items():
        key = key.removeprefix("model.")
        for pattern, target in _STEP_KEYS:
            if pattern.match(key):
                step[pattern.sub(target, key)] = value
                break
        else:
            clip[key] = value
    return clip, step


def convert_spo_checkpoint(checkpoint: str | Path, clip: str, out: str | Path, *,
                           tokenizer: str | None = None) -> Path:
    """Write ``out``, a ``step-aware`` scorer folder, from SPO's SPM ``checkpoint`` and the CLIP folder or hub id it
    was trained from (``clip``: config, tokenizer and processor; its weights are replaced). Strict (module
    docstring)."""
    checkpoint = Path(checkpoint)
    clip_state, step_state = split_spo_state(read_state_dict(checkpoint))
    scorer = StepAwareScorer(clip, init_from_clip=True, tokenizer=tokenizer)
    net = scorer.backbone.net
    own = net.state_dict()
    for key in [k for k in clip_state if _BUFFERS.match(k)]:
        value = clip_state.pop(key)
        if key in own and not torch.equal(value.to(own[key].dtype), own[key]):
            raise ValueError(f"{checkpoint}: buffer {key} differs from the CLIP's")
    load_strict(net, {k: v.to(own[k].dtype) if k in own else v for k, v in clip_state.items()}, checkpoint)
    step = scorer.model.step
    load_strict(step, {k: v.to(step.pooled.weight.dtype) for k, v in step_state.items()}, checkpoint)
    return scorer.save_pretrained(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reward_models.step_aware_spo",
                                     description="Convert SPO's released step-aware preference model (.bin) into a "
                                                 "`step-aware` scorer folder.")
    parser.add_argument("checkpoint", help="SPO's SPM state dict, e.g. sd-v1-5_step-aware_preference_model.bin")
    parser.add_argument("clip", help="the CLIP it was trained from: yuvalkirstain/PickScore_v1 or a local copy")
    parser.add_argument("out", help="folder to write (replaced atomically if it exists)")
    parser.add_argument("--tokenizer", help="tokenizer folder or hub id when `clip` has none")
    args = parser.parse_args(argv)
    try:
        folder = convert_spo_checkpoint(args.checkpoint, args.clip, args.out, tokenizer=args.tokenizer)
    except (OSError, ValueError) as err:
        print(f"step_aware_spo: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {folder}: load_scorer('step-aware', model='{folder}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
