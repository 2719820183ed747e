"""UnifiedReward (Wang et al. 2025; CodeGoat24/UnifiedReward) as a :class:`~reward_models.base.Scorer`: a generative
VLM judge (Qwen2.5-VL / Qwen2-VL through transformers) prompted with the v1 image-generation templates.

- :meth:`UnifiedReward.score` (pointwise, template (b) of reward-scorers.md §8.2): the number after
  ``"Final Score:"``, 1–5; ``details["parse_ok"]`` is 0 and the score NaN when the answer cannot be parsed.
- :meth:`UnifiedReward.preference` (pairwise, template (a)): P(a ≻ b) from the verdicts ``"Image 1 is better"`` /
  ``"Image 2 is better"`` / ``"Both images are equally good"`` (1, 0, ½), asked in both orders and averaged,
  ``½·(p(a,b) + 1 − p(b,a))``, to cancel position bias (§8.3; the official benchmark scripts randomise the order
  instead). NaN unless both orders parse; each order's value is kept in ``details``.

Templates are verbatim (the judge was trained on them); images come before the text in the user turn, image 1
first. Decoding is pinned to greedy (``do_sample=False``, one beam, fixed ``max_new_tokens``) instead of inheriting
the checkpoint's ``generation_config.json`` as the upstream HF scripts do (§8.4). Images are passed to the model's
own processor, whose Qwen ``smart_resize`` (multiples of 28 px within ``min_pixels``/``max_pixels``) is what
``qwen_vl_utils.process_vision_info`` applies upstream; Flow-GRPO's 512×512 resize is left to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .base import PreferenceResult, Provenance, Scorer, ScorerInfo, resolve_dtype
from .inputs import Images, ImageItem, as_items, decode, per_image_prompts
from .judge_parsing import Judgement, parse_final_score, parse_pairwise_verdict
from .weights import check_loading_info, check_model_source, files_sha256, pretrained_weight_files

#: v1 pairwise rank template for image generation (reward-scorers.md §8.2 (a)), verbatim.
PAIRWISE_TEMPLATE = (
    "You are given a text caption and two generated images based on that caption. Your task is to evaluate and "
    "compare these images based on two key criteria:\n1. Alignment with the Caption: Assess how well each image "
    "aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and "
    "attributes as described in the caption.\n2. Overall Image Quality: Examine the visual quality of each image, "
    "including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\nCompare both images "
    "using the above criteria and select the one that better aligns with the caption while exhibiting superior "
    "visual quality.\nProvide a clear conclusion such as \"Image 1 is better.\", \"Image 2 is better.\" and \"Both "
    "images are equally good.\"\nYour task is provided as follows:\nText Caption: [{prompt}]"
)

#: v1 pointwise score template for image generation (reward-scorers.md §8.2 (b)), verbatim.
POINTWISE_TEMPLATE = (
    "You are given a text caption and a generated image based on that caption. Your task is to evaluate this image "
    "based on two key criteria:\n1. Alignment with the Caption: Assess how well this image aligns with the provided "
    "caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the "
    "caption.\n2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail "
    "preservation, color accuracy, and overall aesthetic appeal.\nExtract key elements from the provided text "
    "caption, evaluate their presence in the generated image using the format: 'element (type): value' (where "
    "value=0 means not generated, and value=1 means generated), and assign a score from 1 to 5 after 'Final "
    "Score:'.\nYour task is provided as follows:\nText Caption: [{prompt}]"
)

DEFAULT_MODEL = "CodeGoat24/UnifiedReward-qwen-7b"
MAX_NEW_TOKENS = 512  #: the HF inference scripts' budget for image tasks


def judge_messages(template: str, prompt: str, num_images: int) -> list[dict[str, Any]]:
    """One user turn: ``num_images`` image entries, then the template with ``{prompt}`` replaced (not
    ``str.format``, so braces in prompts are kept literally)."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": template.replace("{prompt}", prompt)})
    return [{"role": "user", "content": content}]


def combine_orders(p_forward: torch.Tensor, p_swapped: torch.Tensor) -> torch.Tensor:
    """P(a ≻ b) from the judge's P(first ≻ second) with a first (``p_forward``) and with b first (``p_swapped``):
    ``½·(p_forward + 1 − p_swapped)``; NaN where either is NaN."""
    return 0.5 * (p_forward + 1.0 - p_swapped)


class ToRGB:
    """Decoded ``[3,H,W]`` image -> RGB PIL image for the VLM processor (picklable, runs in DataLoader workers)."""

    variant = "pil-rgb-vlm-processor"
    batch_variant = variant

    def __call__(self, image: torch.Tensor) -> Image.Image:
        if image.dtype != torch.uint8:
            image = (image.detach().float() * 255.0).round().clamp(0, 255).to(torch.uint8)
        return Image.fromarray(image.permute(1, 2, 0).cpu().numpy(), mode="RGB")


class _DecodedPairs(Dataset):
    def __init__(self, first: Sequence[ImageItem], second: Sequence[ImageItem], transform: ToRGB):
        self.first, self.second, self.transform = first, second, transform

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, i: int) -> tuple[Image.Image, Image.Image]:
        return self.transform(decode(self.first[i], i)), self.transform(decode(self.second[i], i))


class UnifiedReward(Scorer):
    """UnifiedReward v1 judge; see the module docstring.

    Args:
        model: hub id or local folder of a Qwen2-VL / Qwen2.5-VL UnifiedReward checkpoint.
        processor: processor hub id or folder when it is not stored with the model.
        device, dtype: where and in which precision the VLM runs.
        max_new_tokens: generation budget (greedy decoding).
    """

    info = ScorerInfo(
        name="unifiedreward",
        formula="number after 'Final Score:' in the judge's answer to the v1 pointwise template",
        raw_range=(1.0, 5.0),
        differentiable=False,
    )

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        processor: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        max_new_tokens: int = MAX_NEW_TOKENS,
    ):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        net, info = AutoModelForImageTextToText.from_pretrained(
            check_model_source(model, what="scorer model"), dtype=resolve_dtype(dtype, device), output_loading_info=True
        )
        check_loading_info(info, model)
        self.model = net.to(device).eval().requires_grad_(False)
        self.processor = AutoProcessor.from_pretrained(check_model_source(processor or model, what="processor"))
        self.processor.tokenizer.padding_side = "left"  # batched generation: new tokens start at the same column
        self.max_new_tokens = max_new_tokens
        self.transform = ToRGB()
        self.provenance = Provenance(model, files_sha256(pretrained_weight_files(model)), self.transform.variant,
                                     str(resolve_dtype(dtype, device)), f"v1-templates-greedy-max{max_new_tokens}")

    # ---- generation --------------------------------------------------------------------------------------------
    def chat_text(self, messages: list[dict[str, Any]]) -> str:
        """The prompt string the model sees for ``messages`` (chat template with the generation prompt)."""
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def answer(self, conversations: list[list[dict[str, Any]]], images: list[list[Image.Image]]) -> list[str]:
        """Greedy answers to a batch of conversations, ``images[i]`` filling conversation i's image entries."""
        texts = [self.chat_text(m) for m in conversations]
        inputs = self.processor(text=texts, images=[im for row in images for im in row], padding=True,
                                return_tensors="pt").to(self.model.device)
        out = self.model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens)
        return self.processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    # ---- pointwise (Scorer interface) --------------------------------------------------------------------------
    def collate(self, items: list[Image.Image]) -> list[Image.Image]:
        return items

    def encode_prompts(self, prompts: list[str]) -> list[str]:
        return prompts

    def forward(self, inputs: list[Image.Image], prompt_context: list[str], prompt_index: torch.Tensor):
        prompts = [prompt_context[i] for i in prompt_index.tolist()]
        answers = self.answer([judge_messages(POINTWISE_TEMPLATE, p, 1) for p in prompts], [[im] for im in inputs])
        return _as_tensors([parse_final_score(a, *self.info.raw_range) for a in answers])

    # ---- pairwise ------------------------------------------------------------------------------------------------
    def preference(
        self,
        prompts: str | Sequence[str],
        a: Images,
        b: Images,
        *,
        batch_size: int = 8,
        num_workers: int = 0,
        progress: bool = False,
    ) -> PreferenceResult:
        """P(a_i ≻ b_i) from the pairwise template asked in both orders (see the module docstring).

        ``details``: ``p_forward`` (a shown first), ``p_swapped`` (b shown first; P(b ≻ a) as judged), and
        ``parse_ok`` (1 when both answers parsed)."""
        items_a, items_b = as_items(a), as_items(b)
        if len(items_a) != len(items_b):
            raise ValueError(f"preference needs as many 'a' as 'b' images, got {len(items_a)} and {len(items_b)}")
        prompt_list = per_image_prompts(prompts, len(items_a))
        loader = DataLoader(_DecodedPairs(items_a, items_b, self.transform), batch_size=batch_size,
                            num_workers=num_workers, collate_fn=list, shuffle=False)
        forward, swapped = [], []
        with torch.no_grad():
            start = 0
            for pairs in tqdm(loader, disable=not progress, desc="judging pairs (unifiedreward)", unit="batch"):
                batch_prompts = prompt_list[start:start + len(pairs)]
                start += len(pairs)
                messages = [judge_messages(PAIRWISE_TEMPLATE, p, 2) for p in batch_prompts]
                forward += [parse_pairwise_verdict(t) for t in self.answer(messages, [[x, y] for x, y in pairs])]
                swapped += [parse_pairwise_verdict(t) for t in self.answer(messages, [[y, x] for x, y in pairs])]
        p_forward, ok_forward = _as_tensors(forward)
        p_swapped, ok_swapped = _as_tensors(swapped)
        details = {"p_forward": p_forward, "p_swapped": p_swapped,
                   "parse_ok": ok_forward["parse_ok"] * ok_swapped["parse_ok"]}
        return PreferenceResult(combine_orders(p_forward, p_swapped), details, {self.info.name: self.provenance})


def _as_tensors(judgements: list[Judgement]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    values = torch.tensor([j.value for j in judgements], dtype=torch.float32)
    return values, {"parse_ok": torch.tensor([float(j.ok) for j in judgements], dtype=torch.float32)}
