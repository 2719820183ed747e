"""Vision-language preference training: ``VLMDPOConfig``/``VLMDPOTrainer`` and ``run(config)`` for ``visalign train``
(methods ``vlm-dpo``, ``dense-dpo``, ``mia-dpo``).

The text ``DPOTrainer``'s sibling on the shared token-preference trainer (``visalign.trainers.tokens``: loop, losses,
reference strategies, step, saving), for LLaVA-1.5, LLaVA-NeXT and Qwen2-VL (any ``AutoModelForImageTextToText``
model with a ``ProcessorMixin``): images are collated on the fly (``visalign.data.vlm_collator``), one forward over
``[chosen; rejected]`` carries every model-specific input, and the per-token log-probs are scored by the provider
``visalign.likelihood.vlm.VLMTokenLogProbs`` (reference §C.5–C.6); loading, freezing and LoRA targets are in
``visalign.models.vlm``.

Methods on top: RLHF-V dense DPO (``dense_dpo: true``; Yu et al. 2024, eq. 5: γ-weighted token scores for policy and
reference alike, ``visalign.data.dense_dpo``) and MIA-DPO (Liu et al. 2024: plain DPO on the multi-image data that
``visalign.data.mia_dpo_select`` writes; its recipe is LoRA on the language model with the adapter-disabled reference).

Where it differs from TRL 1.16: sequences follow the model's training format (BOS, and EOS after each completion;
``training_format``, see the collator), ``reference: precomputed`` works for VLMs and stores per-token reference
log-probs (TRL refuses precompute with vision data), the vision tower is frozen by default (``freeze_vision_tower``;
TRL trains everything), LoRA targets only the language model's linear layers, and ``max_length`` cuts only
completions (see the collator).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ClassVar

import datasets
import torch
from transformers import PreTrainedModel, ProcessorMixin

from visalign.data.dense_dpo import DENSE_DPO_SCORES
from visalign.data.ref_cache import compute_reference_logps
from visalign.data.sources import load_source, local_folder
from visalign.data.vlm import SCHEMAS, VisionPreferenceDataset
from visalign.data.vlm_collator import DenseDPOWeights, VisionPreferenceCollator
from visalign.likelihood.vlm import VLMTokenLogProbs, vlm_pair_loglik
from visalign.models.lora import is_peft_model
from visalign.models.vlm import freeze_vlm_parts, language_lora_targets, load_processor, load_vlm
from visalign.trainers.config import _help
from visalign.trainers.text import DPOConfig
from visalign.trainers.tokens import TokenPreferenceTrainer, train_and_evaluate

DENSE = ("dense-dpo",)  # the method reading the dense_dpo_* options


@dataclass
class VLMDPOConfig(DPOConfig):
    """VLM preference training: ``DPOConfig`` plus image data, freezing and dense-DPO options; methods ``vlm-dpo``,
    ``dense-dpo`` (RLHF-V) and ``mia-dpo``."""

    TRAINER: ClassVar[str] = "vlm"

    method: str = field(default="vlm-dpo", metadata=_help("the method to train (`visalign train` picks its trainer)"))
    max_length: int | None = field(
        default=None,
        metadata=_help("max prompt + completion tokens per row (image tokens included); only the completion end is "
                       "cut; none (recommended for VLMs) = no cap"),
    )
    image_folder: str | None = field(default=None, metadata=_help(
        "base folder of relative image paths (MIA-DPO); default: the dataset file's folder"))
    confine_image_paths: bool = field(default=False, metadata=_help(
        "refuse image paths that lead outside image_folder (absolute paths, ../, symlinks out)"))
    dataset_schema: str | None = field(
        default=None, metadata=_help(f"row schema: {' | '.join(SCHEMAS)}; none = detect from the columns")
    )
    chat_template_for_plain: bool = field(
        default=True, metadata=_help("render plain-string rows with the processor's chat template (false: raw text)")
    )
    training_format: bool = field(
        default=True,
        metadata=_help("the model's training format: the tokenizer's BOS before the prompt and the end-of-turn token "
                       "(EOS, e.g. LLaVA's </s>) after each completion, as LLaVA, RLHF-V and MIA-DPO trained; false = "
                       "the chat template's text as it is (TRL 1.16; the llava-hf template has no BOS or EOS)"),
    )
    freeze_vision_tower: bool = field(default=True, metadata=_help("keep the vision encoder's weights fixed"))
    freeze_projector: bool = field(default=False, metadata=_help("keep the vision-to-text projector fixed"))
    dense_dpo: bool | None = field(
        default=None,
        metadata=_help("RLHF-V dense DPO: weight corrected tokens by dense_dpo_gamma (both sides); none = as the method "
                       "says (true for dense-dpo, false otherwise); a value contradicting the method fails"),
    )
    dense_dpo_gamma: float = field(default=1.1, metadata={
        **_help("γ on corrected tokens (RLHF-V README 1.1, paper 5)"), "methods": DENSE})
    dense_dpo_min_match_size: int = field(default=3, metadata={
        **_help("diff matches shorter than this many tokens count as changed"), "methods": DENSE})
    dense_dpo_mark_insertions_deletions: bool = field(default=False, metadata={
        **_help("also up-weight pure insertions/deletions (RLHF-V marks replacements only)"), "methods": DENSE})
    dense_dpo_score: str = field(default="weighted_sum", metadata={
        **_help("weighted_sum (RLHF-V code: Σ w·logp) | normalized (paper eq. 5: Σ w·logp / Σ w)"), "methods": DENSE})

    def __post_init__(self) -> None:
        super().__post_init__()
        c = type(self).__name__
        if self.drop_long_prompts:
            raise ValueError(f"{c}.drop_long_prompts is not supported for VLMs; raise max_length or set it to none")
        if self.dataset_schema is not None and self.dataset_schema not in SCHEMAS:
            raise ValueError(f"{c}.dataset_schema must be one of {', '.join(SCHEMAS)}; got {self.dataset_schema!r}")
        if self.dense_dpo_score not in DENSE_DPO_SCORES:
            raise ValueError(f"{c}.dense_dpo_score must be one of {', '.join(DENSE_DPO_SCORES)}; "
                             f"got {self.dense_dpo_score!r}")
        if not (isinstance(self.dense_dpo_gamma, (int, float)) and self.dense_dpo_gamma > 0):
            raise ValueError(f"{c}.dense_dpo_gamma must be > 0; got {self.dense_dpo_gamma!r}")
        if self.dense_dpo_min_match_size < 1:
            raise ValueError(f"{c}.dense_dpo_min_match_size must be >= 1; got {self.dense_dpo_min_match_size}")

    @property
    def reduction(self) -> str:
        """The ``likelihood.text`` sequence score: ``sum``, or the dense-DPO weighted form."""
        return DENSE_DPO_SCORES[self.dense_dpo_score] if self.dense_dpo else "sum"


class VLMDPOTrainer(TokenPreferenceTrainer):
    """Preference training of a VLM with any paired loss (module docstring); the text ``DPOTrainer``'s sibling.

    Args:
        model: hub id or local folder (``AutoModelForImageTextToText.from_pretrained``) or a loaded model /
            ``PeftModel``; ``None`` takes ``args.model``.
        args: a ``VLMDPOConfig``.
        train_dataset, eval_dataset: ``datasets.Dataset`` / list of dicts in any schema of ``visalign.data.vlm``, or a
            ``load_source`` spec.
        processor: the model's processor; ``None`` loads it with ``AutoProcessor.from_pretrained``.
    """

    config_class = VLMDPOConfig
    methods = ("vlm-dpo", "dense-dpo", "mia-dpo")
    auto_class = "AutoModelForImageTextToText"

    def __init__(self, model: str | PreTrainedModel | None = None, args: VLMDPOConfig | None = None,
                 train_dataset: datasets.Dataset | list | str | None = None,
                 eval_dataset: datasets.Dataset | list | str | None = None,
                 processor: ProcessorMixin | None = None) -> None:
        super().__init__(model, args, train_dataset, eval_dataset, processor)

    # ---------------------------------------------------------------------------------------------- data

    def _vision_dataset(self, data, split: str, name: str) -> VisionPreferenceDataset:
        image_folder = self.args.image_folder
        if isinstance(data, str):
            name = data
            image_folder = image_folder or local_folder(data)  # relative paths: against the file's folder
            data = load_source(data, split=split)
        return VisionPreferenceDataset(data, name=name, image_folder=image_folder, schema=self.args.dataset_schema,
                                       confine_image_paths=self.args.confine_image_paths)

    def build_datasets(self) -> tuple[VisionPreferenceDataset, VisionPreferenceDataset | None]:
        train = self._vision_dataset(self._raw_train, self.args.dataset_split, "train_dataset")
        held_out = None if self._raw_eval is None else self._vision_dataset(self._raw_eval, self.args.eval_split,
                                                                             "eval_dataset")
        self._set_up_processing_class()
        if not isinstance(self.processing_class, ProcessorMixin):
            raise TypeError(f"VLMDPOTrainer needs a ProcessorMixin processor; got "
                            f"{type(self.processing_class).__name__}")
        return train, held_out

    def load_processing_class(self) -> ProcessorMixin:
        source = self._model_spec if isinstance(self._model_spec, str) else self._model_spec.name_or_path
        return load_processor(source, trust_remote_code=self.args.trust_remote_code)

    def build_collator(self) -> VisionPreferenceCollator:
        args = self.args
        dense = DenseDPOWeights(args.dense_dpo_gamma, args.dense_dpo_min_match_size,
                                args.dense_dpo_mark_insertions_deletions) if args.dense_dpo else None
        return VisionPreferenceCollator(self.processing_class, max_length=args.max_length,
                                        chat_template_for_plain=args.chat_template_for_plain, dense_dpo=dense,
                                        training_format=args.training_format)

    # ---------------------------------------------------------------------------------------------- model

    def load_model(self, spec: str) -> torch.nn.Module:
        args = self.args
        return load_vlm(spec, dtype=args.model_dtype, attn_implementation=args.attn_implementation,
                        trust_remote_code=args.trust_remote_code)

    def freeze_parts(self, model: torch.nn.Module) -> None:
        freeze_vlm_parts(model, vision_tower=self.args.freeze_vision_tower, projector=self.args.freeze_projector)

    def lora_targets(self, model: torch.nn.Module) -> list[str] | None:
        """``lora_target_modules``, else the language model's linear layers."""
        return self.args.lora_target_modules or language_lora_targets(model)

    # ---------------------------------------------------------------------------------------------- likelihood

    def build_likelihood(self) -> VLMTokenLogProbs:
        """Token log-probs with the config's ``reduction`` (summed, or dense DPO's γ-weighted form)."""
        return VLMTokenLogProbs(self.args.reduction)

    def attach_reference(self, dataset: VisionPreferenceDataset, name: str) -> VisionPreferenceDataset:
        """Run the reference once over ``dataset`` (in order, ``ref_cache.compute_reference_logps``, in memory) and
        return it with per-row ``ref_*`` columns: summed and per-completion-token log-probs, so weighted (dense-DPO)
        and per-token losses can use them. The reference is the policy before training, with LoRA adapters disabled,
        under the training autocast."""
        model = self.accelerator.unwrap_model(self.model)
        adapters_off = model.disable_adapter() if is_peft_model(model) else contextlib.nullcontext()
        with adapters_off, self.accelerator.autocast():
            columns = compute_reference_logps(
                model, dataset, self.collator, batch_size=self.precompute_batch_size(), per_token=True,
                num_workers=self.args.dataloader_num_workers, loglik=vlm_pair_loglik,
                desc=f"Reference log-probs of {name}",
            )
        return dataset.with_columns(columns)


def run(config: VLMDPOConfig) -> dict[str, float]:
    """Train as ``config`` says (``visalign train`` with method vlm-dpo, dense-dpo or mia-dpo); with an eval data set,
    evaluate before and after training (``train_and_evaluate``)."""
    return train_and_evaluate(VLMDPOTrainer(args=config))
