"""CLIP backbones (transformers ``CLIPModel`` or open_clip) and the dual-encoder scoring shared by PickScore, HPS and
CLIP score.

A backbone loads strictly, runs in the requested dtype and returns projected features; the scorer does the final
products in float32: ``cos = <t/|t|, v/|v|>`` from fp32 embeddings (reward-scorers.md §2.4: half-precision scores
differ in the 2nd-3rd decimal otherwise). Text is encoded once per distinct prompt.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
import torch.nn.functional as F

from .base import Provenance, Scorer, resolve_dtype
from .weights import (
    check_loading_info,
    check_model_source,
    files_sha256,
    load_strict,
    pretrained_weight_files,
    read_state_dict,
    resolve_file,
)

TEXT_CHUNK = 64  #: prompts per text-encoder forward


def unwrap_features(output: Any) -> torch.Tensor:
    """transformers 5 returns ``BaseModelOutputWithPooling`` from ``get_*_features`` (the projection is in
    ``pooler_output``); older versions return the tensor; ``*WithProjection`` models use ``image_embeds`` /
    ``text_embeds`` (reward-scorers.md §1.4)."""
    if isinstance(output, torch.Tensor):
        return output
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot find projected features in {type(output).__name__}")


class HFClip:
    """A transformers ``CLIPModel`` with its tokenizer, frozen, on ``device`` in ``dtype``."""

    def __init__(self, model: str, *, tokenizer: str | None = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str | None = None, load_tokenizer: bool = True):
        from transformers import AutoTokenizer, CLIPModel

        self.model_id = model
        net, info = CLIPModel.from_pretrained(check_model_source(model, what="scorer model"),
                                              dtype=resolve_dtype(dtype, device), output_loading_info=True)
        check_loading_info(info, model)
        self.net = net.to(device).eval().requires_grad_(False)
        if load_tokenizer:
            self.tokenizer = AutoTokenizer.from_pretrained(check_model_source(tokenizer or model, what="tokenizer"))
        else:
            self.tokenizer = None
        self.max_length = net.config.text_config.max_position_embeddings
        self.image_size = net.config.vision_config.image_size
        self.weights_sha256 = files_sha256(pretrained_weight_files(model))

    @property
    def device(self) -> torch.device:
        return self.net.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.visual_projection.weight.dtype

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.net.logit_scale.float()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.device, self.dtype)
        return unwrap_features(self.net.get_image_features(pixel_values=pixel_values))

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        return unwrap_features(self.net.get_text_features(input_ids=tokens["input_ids"],
                                                          attention_mask=tokens["attention_mask"]))


class OpenClip:
    """An open_clip model of architecture ``arch`` built without pretrained weights, then loaded strictly from
    ``model`` (a state-dict file, a folder holding ``filename``, or a hub repo holding it); open_clip's bundled BPE
    tokenizer, so text needs no download."""

    def __init__(self, model: str, *, arch: str, filename: str, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str | None = None):
        import open_clip

        self.model_id = model
        path = resolve_file(model, filename)
        net = open_clip.create_model(arch, pretrained=None, load_weights=False)
        load_strict(net, read_state_dict(path), path)
        self.net = net.to(device=device, dtype=resolve_dtype(dtype, device)).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        size = net.visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else size
        self.weights_sha256 = files_sha256([path])

    @property
    def device(self) -> torch.device:
        return self.net.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.logit_scale.dtype

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.net.logit_scale.float()

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net.encode_image(pixel_values.to(self.device, self.dtype))

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        return self.net.encode_text(self.tokenizer(prompts).to(self.device))


Backbone = HFClip | OpenClip


class DualEncoderScorer(Scorer):
    """Scores from the fp32 cosine of L2-normalised image and text embeddings; subclasses map the cosine to their
    score with :meth:`from_cosine`. ``details["cosine"]`` always holds the cosine."""

    backbone: Backbone

    def __init__(self, backbone: Backbone, transform, variant: str = ""):
        self.backbone, self.transform = backbone, transform
        self.provenance = Provenance(backbone.model_id, backbone.weights_sha256, transform.variant,
                                     str(backbone.dtype), variant)

    def text_inputs(self, prompts: list[str]) -> list[str]:
        """Prompts as fed to the text tower (CLIP score adds its prefix here)."""
        return prompts

    @abc.abstractmethod
    def from_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        """The scorer's score from the fp32 cosine ``[b]``."""

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        texts = self.text_inputs(prompts)
        chunks = [self.backbone.text_features(texts[i : i + TEXT_CHUNK]) for i in range(0, len(texts), TEXT_CHUNK)]
        return F.normalize(torch.cat(chunks).float(), dim=-1)

    def forward(self, inputs: torch.Tensor, prompt_context: torch.Tensor, prompt_index: torch.Tensor):
        image = F.normalize(self.backbone.image_features(inputs).float(), dim=-1)
        text = prompt_context[prompt_index.to(prompt_context.device)]
        cosine = (image * text).sum(-1)
        return self.from_cosine(cosine), {"cosine": cosine}
