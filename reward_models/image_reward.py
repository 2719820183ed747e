"""ImageReward v1.0 (Xu et al., NeurIPS 2023; THUDM/ImageReward) as a :class:`~reward_models.base.Scorer`.

``reward = (MLP(BERT_CLS(ids, cross-attending to ViT(x))) − 0.16717362830052426) / 1.0333394966054072``
(reward-scorers.md §5.3): BLIP ViT-L/16 image tokens, a cross-attention BERT over the prompt padded/truncated to 35
tokens, a linear MLP head on the ``[CLS]`` state. The constants are the mean/std of raw rewards on ImageReward's
test set, so rewards are roughly N(0, 1) on SD1.4 images; they compare only within one prompt. Training minimised
a cross-entropy over (better, worse) raw rewards, so ``P(a ≻ b) = σ(raw_a − raw_b)`` (:meth:`preference`).

Loading (reward-scorers.md §5.1, §5.6): ``model`` is the hub repo ``THUDM/ImageReward`` (``ImageReward.pt`` and
``med_config.json``), a folder with those files, or a weight file (``.pt`` / ``.safetensors``, e.g. DiffSynth's
re-host) with ``med_config.json`` beside it or given as ``med_config``. Weights are read with
``weights_only=True`` or safetensors and loaded strictly (upstream uses ``strict=False`` and silently keeps a random
head for a wrong file). The BERT tokenizer (``bert-base-uncased`` plus ``[DEC]``/``[ENC]``, as upstream) loads from
``tokenizer``, a hub id or a local folder, so offline installs can point at a local copy.

Differences from upstream: images are scored in batches (upstream loops one image at a time; results agree up to
float rounding); the centre crop offset is floored like transformers' CLIP processor where torchvision's
``CenterCrop`` rounds (one pixel apart when the overflow is odd); the head always runs in float32 while the
backbone may run in half precision.
"""

from __future__ import annotations

import json
from pathlib import Path
import torch

from ._blip import BlipViTConfig, ImageRewardModel, text_config_from_med
from .base import UNBOUNDED, Provenance, Scorer, ScorerInfo, resolve_dtype
from .preprocess import CenterCropTransform
from .weights import check_model_source, file_sha256, load_strict, read_state_dict, resolve_file

IMAGEREWARD_MEAN = 0.16717362830052426  #: mean raw reward on the ImageReward test set
IMAGEREWARD_STD = 1.0333394966054072  #: std of raw rewards on the ImageReward test set
MAX_TEXT_TOKENS = 35  #: prompts are padded/truncated to 35 BERT tokens including [CLS]/[SEP]
DEFAULT_MODEL = "THUDM/ImageReward"
DEFAULT_TOKENIZER = "bert-base-uncased"
WEIGHTS_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
#: BLIP's ``med.py`` saves the text position ids as a persistent buffer; transformers' port keeps them out of its
#: state dict. The loader checks the buffer is ``arange`` and drops it.
POSITION_IDS_KEY = "blip.text_encoder.embeddings.position_ids"


def load_tokenizer(tokenizer: str | Path = DEFAULT_TOKENIZER):
    """BLIP's ``init_tokenizer``: a BERT tokenizer with ``[DEC]`` as bos and ``[ENC]`` as an extra special token."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(check_model_source(tokenizer, what="tokenizer"))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def _med_config_path(model: str, weights: Path, med_config: str | Path | None) -> Path:
    if med_config is not None:
        path = Path(med_config)
    elif Path(model).exists():
        path = weights.parent / MED_CONFIG_FILE
    else:
        return resolve_file(model, MED_CONFIG_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"ImageReward text-encoder config {path} not found (pass med_config=PATH)")
    return path


def _drop_position_ids(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    ids = state.pop(POSITION_IDS_KEY, None)
    if ids is not None and not torch.equal(ids.flatten().long(), torch.arange(ids.numel())):
        raise ValueError(f"{source}: {POSITION_IDS_KEY} is not 0..{ids.numel() - 1}; not an ImageReward checkpoint")
    return state


def load_image_reward_model(
    model: str | Path = DEFAULT_MODEL,
    *,
    med_config: str | Path | None = None,
    vision: BlipViTConfig | None = None,
) -> tuple[ImageRewardModel, Path]:
    """Build the network from ``med_config.json`` and ``vision`` (default ViT-L/16 at 224) and load the weights
    strictly; returns the float32 model in eval mode and the weight file it came from."""
    model = str(model)
    vision = vision or BlipViTConfig()
    weights = resolve_file(model, WEIGHTS_FILE)
    config_path = _med_config_path(model, weights, med_config)
    try:
        med = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    net = ImageRewardModel(vision, text_config_from_med(med, vision.width, str(config_path)))
    load_strict(net, _drop_position_ids(read_state_dict(weights), weights), weights)
    return net.eval(), weights


class ImageReward(Scorer):
    """ImageReward v1.0 scorer; see the module docstring. ``details["raw"]`` is the un-normalised MLP output.

    Args:
        model: hub id, folder or weight file (see module docstring).
        tokenizer: BERT tokenizer hub id or local folder.
        med_config: path of ``med_config.json`` when it is not beside the weights.
        vision: the ViT shape (default: ImageReward's ViT-L/16 at 224; tests use tiny ones).
        device, dtype: where and in which precision the backbone runs; the head and the score stay float32.
        backend: ``"pil"`` (upstream's PIL bicubic resize) or ``"torch"`` (antialiased tensor resize).
    """

    info = ScorerInfo(
        name="imagereward",
        formula=f"(MLP(BERT_CLS(prompt, ViT(image))) - {IMAGEREWARD_MEAN}) / {IMAGEREWARD_STD}",
        raw_range=UNBOUNDED,
        differentiable=True,
    )

    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        *,
        tokenizer: str | Path = DEFAULT_TOKENIZER,
        med_config: str | Path | None = None,
        vision: BlipViTConfig | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        backend: str = "pil",
    ):
        net, weights = load_image_reward_model(model, med_config=med_config, vision=vision)
        self.tokenizer = load_tokenizer(tokenizer)
        vocab = net.blip.text_encoder.config.vocab_size
        if len(self.tokenizer) > vocab:
            raise ValueError(f"tokenizer {tokenizer} has {len(self.tokenizer)} tokens (with [DEC], [ENC]) but the "
                             f"text encoder of {model} embeds only {vocab}")
        net.blip.to(device=device, dtype=resolve_dtype(dtype, device))
        net.mlp.to(device=device, dtype=torch.float32)
        self.net = net.requires_grad_(False)
        self.transform = CenterCropTransform(net.blip.visual_encoder.config.image_size, backend)
        self.provenance = Provenance(str(model), file_sha256(weights), self.transform.variant,
                                     str(resolve_dtype(dtype, device)), f"text{MAX_TEXT_TOKENS}")

    @property
    def device(self) -> torch.device:
        return self.net.mlp.layers[0].weight.device

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_TEXT_TOKENS,
                                return_tensors="pt")
        return {"input_ids": tokens["input_ids"].to(self.device),
                "attention_mask": tokens["attention_mask"].to(self.device)}

    def forward(self, inputs: torch.Tensor, prompt_context: dict[str, torch.Tensor], prompt_index: torch.Tensor):
        index = prompt_index.to(self.device)
        dtype = self.net.blip.visual_encoder.pos_embed.dtype
        raw = self.net(inputs.to(self.device, dtype), prompt_context["input_ids"][index],
                       prompt_context["attention_mask"][index])
        return (raw - IMAGEREWARD_MEAN) / IMAGEREWARD_STD, {"raw": raw}

    def preference_logits(self, scores: torch.Tensor) -> torch.Tensor:
        """The raw reward ``score · std + mean``: the logit of ImageReward's pairwise training loss."""
        return scores * IMAGEREWARD_STD + IMAGEREWARD_MEAN

