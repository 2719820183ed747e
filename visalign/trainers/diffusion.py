"""Diffusion preference training on SD1.5 / SD2.x / SDXL UNets: Diffusion-DPO, MaPO, DCPO and InPO.

One trainer; a method is a choice along the four axes of DESIGN.md:

| method (config) | data | likelihood noise source | loss | reference |
| --- | --- | --- | --- | --- |
| ``diffusion-dpo`` (``DiffusionConfig``) | pair + caption | ``random``: t and eps shared within the pair | any paired core loss (``sigmoid``) | ``disable_adapter`` with LoRA, else ``frozen_copy`` |
| ``mapo`` (``MaPOConfig``) | same | ``random`` | ``mapo`` | none: no reference forward |
| ``dcpo`` (``DCPOConfig``) | per-side captions | ``random`` | ``sigmoid`` | as DPO |
| ``inpo`` (``InPOConfig``) | same as DPO | ``ddim_inversion`` | ``sigmoid`` | as DPO |

Per micro-batch of B pairs (rows ``[chosen; rejected]``), prepared by the likelihood provider
(``visalign.likelihood.diffusion.DiffusionELBO``): latents (VAE posterior mean, or the latent cache), prompt
embeddings (encoded per step, or the text cache; DCPO conditions each side on its own caption, SDXL adds each image's
pooled embedding and time ids), one noised point per image from the noise source, ONE policy UNet forward
over the 2B samples, one no-grad reference forward on the same inputs, then the paired loss on the ELBO surrogate
``-0.5·MSE`` (Diffusion-DPO Eq. 14 / Supp. Eq. 46; reference ``diffusion-methods.md`` §2–§5, §7, §10).

β convention: the paper's and Salesforce's ``-logσ(-β/2·(Δθ - Δref))``, so the diffusers SD1.5 script's
``--beta_dpo 2500`` is β 5000 here (§4.1).

Where we differ from the reference code, on purpose:

- Noise is keyed, not streamed: pair ``index`` at optimizer step ``s`` draws its t and eps (and InPO's eta noise)
  from a generator seeded with ``(seed, s, index)``. The draws therefore do not depend on the number of processes,
  the per-device batch size or a resume, so 2 processes give the same update as 1 process with the same global
  batch (Salesforce seeds ``seed + process_index``). The noise source is called pair by pair for this; for InPO that
  batches the inversion forwards per pair (2 images), which costs nothing at the papers' per-device batch of 1.
- Latents are the VAE posterior mean (``sample=False``), the same tensors the latent cache stores, so cached and
  uncached runs agree; the scripts draw a posterior sample per step (a difference far below the diffusion noise).
- SDXL time ids carry each image's true original size and crop by default (``sdxl_time_ids: true_size``, as the
  diffusers port and MaPO); ``square_resolution`` gives the ``(res, res, 0, 0, res, res)`` of Salesforce, InPO and
  DCPO, used by the recipes that reproduce those launchers (``sdxl-dpo``, ``sdxl-inpo``).
- DCPO on SD 2.1 keeps the scheduler's v-prediction (the DCPO code forces epsilon, reference §10.1).
- The LoRA is added the diffusers way (``unet.add_adapter(LoraConfig)``, gaussian init, r = alpha by default, the
  port's targets) rather than by wrapping it in a ``PeftModel`` (``visalign.models.lora.apply_lora``), so the result
  saves in diffusers' LoRA format; the adapter-disabled reference (``visalign.reference``) toggles
  ``disable_adapters()``/``enable_adapters()`` on it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate.utils import DistributedType

from visalign.config_io import save_config
from visalign.data.diffusion import (
    SCHEMAS,
    SKIPPED,
    DiffusionPreferenceDataset,
    PreferencePairs,
    collate_diffusion_pairs,
    load_preference_pairs,
)
from visalign.data.diffusion_cache import cached_preference_dataset
from visalign.data.image_transforms import PairTransform
from visalign.evaluation.validation import ValidationSettings, run_validation
from visalign.likelihood.diffusion import DiffusionELBO
from visalign.likelihood.noise import NOISE_SOURCES, make_noise_source
from visalign.models.diffusion import SDXL_TIME_IDS, DiffusionComponents, load_diffusion_components
from visalign.models.builtin import is_builtin
from visalign.models.diffusion_io import has_lora, save_diffusion_lora, save_diffusion_unet, write_model_card
from visalign.objective import make_objective
from visalign.reference import Reference, make_reference
from visalign.trainers._common import CONFIG_FILE, MIXED_DTYPES
from visalign.trainers._loop import Trainer
from visalign.trainers.config import PreferenceConfig, _help

logger = logging.getLogger(__name__)

DIFFUSION_REFERENCES = ("auto", "frozen_copy", "disable_adapter", "none")
LATENT_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class DiffusionConfig(PreferenceConfig):
    """Preference training of SD/SDXL UNets on image pairs: methods ``diffusion-dpo`` (Wallace et al. 2023), ``mapo``,
    ``dcpo`` and ``inpo`` (``visalign.trainers.methods`` gives each its defaults and requirements)."""

    TRAINER: ClassVar[str] = "diffusion"

    method: str = field(default="diffusion-dpo", metadata=_help("the method to train (`visalign train` picks its "
                                                                "trainer)"))
    beta: float | None = field(
        default=None,
        metadata=_help("β multiplies the ELBO-surrogate log-ratios (-0.5·MSE), the paper's -logσ(-β/2·(Δθ-Δref)) "
                       "convention: 2000-5000 for Diffusion-DPO; diffusers' SD1.5 --beta_dpo 2500 is β 5000 here. "
                       "For MaPO it is β_mapo. none = the method's (diffusion-dpo 5000, mapo 0.1, dcpo 500, "
                       "inpo 5000)"),
    )
    learning_rate: float = field(default=1e-5, metadata=_help("peak learning rate (after warmup)"))
    lr_scheduler: str = field(default="constant_with_warmup", metadata=_help("transformers learning-rate schedule"))
    per_device_batch_size: int = field(default=1, metadata=_help("image pairs per device per micro-batch"))
    lora_r: int = field(default=8, metadata=_help("LoRA rank"))
    lora_alpha: float = field(default=8.0, metadata=_help("LoRA alpha (update scaled by alpha / r); diffusers: = r"))
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata=_help("denoiser modules to adapt; none = the model family's (SD/SDXL: the diffusers port's "
                       "to_q,to_k,to_v,to_out.0)"),
    )
    # --- model
    model_revision: str | None = field(default=None, metadata=_help("hub revision of `model`"))
    model_variant: str | None = field(default=None, metadata=_help("weights variant of `model`, e.g. fp16"))
    vae: str | None = field(
        default=None,
        metadata=_help("separate (fp16-safe) VAE, e.g. madebyollin/sdxl-vae-fp16-fix, loaded in the mixed-precision "
                       "dtype; none = the model's own VAE, kept in fp32"),
    )
    vae_subfolder: str | None = field(default=None, metadata=_help("subfolder of `vae` holding the VAE"))
    vae_encode_batch_size: int = field(default=8, metadata=_help("images per VAE forward when encoding latents"))
    # --- data
    data_schema: str = field(default="auto", metadata=_help(f"dataset schema: {' | '.join(SCHEMAS)}"))
    keep_ties: bool = field(default=False, metadata=_help("Pick-a-Pic: keep ties (jpg_0 as chosen) instead of "
                                                           "dropping them"))
    chosen_column: str = field(default="chosen", metadata=_help("generic schema: chosen image column"))
    rejected_column: str = field(default="rejected", metadata=_help("generic schema: rejected image column"))
    caption_column: str = field(default="caption", metadata=_help("caption column (shared by both images)"))
    caption_chosen_column: str | None = field(
        default=None, metadata=_help("per-side captions (DCPO): the chosen image's caption column; none = no "
                                     "per-side captions (dcpo: caption_chosen)"))
    caption_rejected_column: str | None = field(
        default=None, metadata=_help("per-side captions (DCPO): the rejected image's caption column (dcpo: "
                                     "caption_rejected)"))
    caption_0_column: str | None = field(
        default=None, metadata=_help("Pick-a-Pic schema, per-image captions (DCPO's Pick-Double Caption): jpg_0's "
                                     "caption column, swapped with the image by label_0 (dcpo: caption_0)"))
    caption_1_column: str | None = field(
        default=None, metadata=_help("Pick-a-Pic schema, per-image captions: jpg_1's caption column (dcpo: "
                                     "caption_1)"))
    weight_column: str | None = field(default=None, metadata=_help("optional per-pair loss weight column"))
    confine_image_paths: bool = field(
        default=False, metadata=_help("refuse image paths that lead outside the dataset's folder (absolute paths, "
                                      "../, symlinks out); off by default: paths may point anywhere readable"))
    resolution: int | None = field(
        default=None, metadata=_help("training resolution in pixels; none = the UNet's native size (SD1.5 512, "
                                     "SDXL 1024)"))
    sdxl_time_ids: str = field(
        default="true_size",
        metadata=_help(f"SDXL micro-conditioning: {' | '.join(SDXL_TIME_IDS)} (true_size: each image's true size and "
                       "crop, the diffusers port and MaPO; square_resolution: (res, res, 0, 0, res, res), the "
                       "Salesforce, InPO and DCPO launchers)"))
    center_crop: bool = field(default=True, metadata=_help("centre crop (true) or random crop (false) of the pair"))
    random_flip: bool = field(default=True, metadata=_help("flip both images of a pair with probability 0.5"))
    caption_dropout: float | None = field(
        default=None, metadata=_help("probability of replacing a pair's captions by \"\"; none = the method's (0.2 "
                                     "Diffusion-DPO/InPO, 0 MaPO/DCPO; the diffusers port: 0)"))
    cache_dir: str | None = field(
        default=None, metadata=_help("folder of the VAE-latent and text-embedding cache (filled once, reused); "
                                     "none = encode every step"))
    cache_latent_dtype: str = field(default="float32", metadata=_help(f"cached latents: {' | '.join(LATENT_DTYPES)}"))
    # --- likelihood
    noise_source: str | None = field(
        default=None,
        metadata=_help(f"where x_t comes from: {' | '.join(NOISE_SOURCES)} (random: t and eps shared within the "
                       "pair; ddim_inversion: InPO); none = the method's (inpo: ddim_inversion, else random)"))
    inversion_steps: int = field(default=10, metadata=_help("ddim_inversion: DDIM inversion steps (InPO: 10)"))
    inversion_eta: float = field(default=0.0, metadata=_help("ddim_inversion: stochastic term per step (InPO: 0.1)"))
    # --- validation images
    validation_prompts: list[str] | None = field(
        default=None, metadata=_help("prompts rendered at intervals and at the end (one image each); none = off"))
    validation_steps: int = field(default=0, metadata=_help("render every this many optimizer steps; 0 = at the end "
                                                             "only; ignored when validation_prompts is none"))
    validation_seed: int = field(default=0, metadata=_help("image i of the validation grid uses seed + i"))
    validation_inference_steps: int = field(default=25, metadata=_help("sampler (DPM-Solver++) steps"))
    validation_guidance_scale: float | None = field(
        default=None, metadata=_help("CFG scale of validation images; none = 7.5 SD, 5.0 SDXL"))

    def __post_init__(self) -> None:
        super().__post_init__()
        c = type(self).__name__
        checks = [
            (self.reference in DIFFUSION_REFERENCES, "reference", " | ".join(DIFFUSION_REFERENCES), self.reference),
            (self.data_schema in SCHEMAS, "data_schema", " | ".join(SCHEMAS), self.data_schema),
            (self.sdxl_time_ids in SDXL_TIME_IDS, "sdxl_time_ids", " | ".join(SDXL_TIME_IDS), self.sdxl_time_ids),
            (self.resolution is None or (self.resolution >= 8 and self.resolution % 8 == 0), "resolution",
             "none or a positive multiple of 8 (the VAE downsamples by 8)", self.resolution),
            (0.0 <= self.caption_dropout <= 1.0, "caption_dropout", "in [0, 1]", self.caption_dropout),
            (self.cache_latent_dtype in LATENT_DTYPES, "cache_latent_dtype", " | ".join(LATENT_DTYPES),
             self.cache_latent_dtype),
            (self.noise_source in NOISE_SOURCES, "noise_source", " | ".join(NOISE_SOURCES), self.noise_source),
            (self.inversion_steps >= 1, "inversion_steps", ">= 1", self.inversion_steps),
            (self.inversion_eta >= 0, "inversion_eta", ">= 0", self.inversion_eta),
            (self.vae_encode_batch_size >= 1, "vae_encode_batch_size", ">= 1", self.vae_encode_batch_size),
            (self.validation_steps >= 0, "validation_steps", ">= 0", self.validation_steps),
            (self.validation_inference_steps >= 1, "validation_inference_steps", ">= 1",
             self.validation_inference_steps),
        ]
        for ok, key, expected_text, value in checks:
            if not ok:
                raise ValueError(f"{c}.{key} must be {expected_text}; got {value!r}")
        for first, second in (("caption_chosen_column", "caption_rejected_column"),
                              ("caption_0_column", "caption_1_column")):
            if (getattr(self, first) is None) != (getattr(self, second) is None):
                raise ValueError(f"{c}.{first} and {second} go together; got {getattr(self, first)!r} and "
                                 f"{getattr(self, second)!r}")
        if self.cache_dir is not None and not self.center_crop:
            raise ValueError(f"{c}.cache_dir needs center_crop: true (random crops cannot be cached)")
        if self.reference == "disable_adapter" and not self.use_lora:
            raise ValueError(f"{c}.reference 'disable_adapter' needs use_lora: true (full fine-tuning uses "
                             "frozen_copy)")

    @property
    def noise_options(self) -> dict[str, Any]:
        if self.noise_source == "ddim_inversion":
            return {"num_inversion_steps": self.inversion_steps, "eta": self.inversion_eta}
        return {}


def _method_field(name: str) -> Any:
    return field(default=name, metadata=_help("the method to train (`visalign train` picks its trainer)"))


@dataclass
class MaPOConfig(DiffusionConfig):
    """``DiffusionConfig(method="mapo")``: MaPO (Hong et al. 2024), the reference-free ``mapo`` loss (β = β_mapo 0.1,
    s 0.5, T 1000), no caption dropout, no reference model loaded. A name for the method, adding nothing."""

    method: str = _method_field("mapo")


@dataclass
class DCPOConfig(DiffusionConfig):
    """``DiffusionConfig(method="dcpo")``: DCPO (Saeidi et al. 2025), Diffusion-DPO with the chosen image conditioned
    on its own caption and the rejected one on another (``caption_chosen_column``/``caption_rejected_column``; a paired
    folder's per-side captions). A name for the method, adding nothing."""

    method: str = _method_field("dcpo")


@dataclass
class InPOConfig(DiffusionConfig):
    """``DiffusionConfig(method="inpo")``: InPO (Lu et al. 2025), Diffusion-DPO scored at x_t from a DDIM inversion of
    each image by the policy. A name for the method, adding nothing."""

    method: str = _method_field("inpo")


class _IndexedPairs(torch.utils.data.Dataset):
    """A pair dataset whose items also carry their ``index`` (the key of their noise)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "index": int(index)}

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def collate_indexed_pairs(items: list[dict]) -> dict:
    """``collate_diffusion_pairs`` plus ``indices`` ``[B]`` of the kept pairs."""
    batch = collate_diffusion_pairs(items)
    batch["indices"] = [item["index"] for item in items if SKIPPED not in item]
    return batch


class DiffusionTrainer(Trainer):
    """Preference training of a diffusers UNet (module docstring).

    Args:
        args: a ``DiffusionConfig`` (or ``MaPOConfig``, ``DCPOConfig``, ``InPOConfig``).
        model: a hub id / local pipeline folder, or loaded ``DiffusionComponents``; ``None`` takes ``args.model``.
        train_dataset, eval_dataset: a data spec (folder, file, hub id) or loaded ``PreferencePairs``; ``None`` takes
            ``args.dataset`` / ``args.eval_dataset``.
    """

    #: True for a trainer whose data source draws its examples from the policy (on-policy, SPO): no ``dataset``.
    draws_its_data: ClassVar[bool] = False

    def __init__(
        self,
        args: DiffusionConfig,
        model: str | DiffusionComponents | None = None,
        train_dataset: str | PreferencePairs | None = None,
        eval_dataset: str | PreferencePairs | None = None,
    ) -> None:
        if not isinstance(args, DiffusionConfig):
            raise TypeError(f"DiffusionTrainer needs a DiffusionConfig; got {type(args).__name__}")
        self._model_spec = model if model is not None else args.model
        if self._model_spec is None:
            raise ValueError("DiffusionTrainer: no model given (pass model= or set `model` in the config)")
        self._raw_train = train_dataset if train_dataset is not None else args.dataset
        if self._raw_train is None and not self.draws_its_data:
            raise ValueError("DiffusionTrainer: no training data (pass train_dataset= or set `dataset`)")
        self._raw_eval = eval_dataset if eval_dataset is not None else args.eval_dataset
        self.noise_source = make_noise_source(args.noise_source, **args.noise_options)
        self.reference: Reference | None = None
        super().__init__(args)

    # ---------------------------------------------------------------------------------------------- data

    def _pairs(self, spec: str | PreferencePairs, split: str) -> PreferencePairs:
        if isinstance(spec, PreferencePairs):
            pairs = spec
        else:
            a = self.args
            pairs = load_preference_pairs(
                spec, schema=a.data_schema, split=split, keep_ties=a.keep_ties, chosen_column=a.chosen_column,
                rejected_column=a.rejected_column, caption_column=a.caption_column,
                caption_chosen_column=a.caption_chosen_column, caption_rejected_column=a.caption_rejected_column,
                caption_0_column=a.caption_0_column, caption_1_column=a.caption_1_column,
                weight_column=a.weight_column, confine_image_paths=a.confine_image_paths,
            )
        if len(pairs) == 0:
            raise ValueError(f"{pairs.name}: no preference pairs left to train on (report: {pairs.report})")
        pairs.check_readable()
        if self.args.method == "dcpo" and pairs.captions_chosen == pairs.captions_rejected:
            raise ValueError(
                f"{pairs.name}: DCPO needs a caption per image, but every pair has one caption for both images, so "
                "this would train plain Diffusion-DPO; name the per-side caption columns (caption_0_column/"
                "caption_1_column for Pick-a-Pic-shaped data, caption_chosen_column/caption_rejected_column "
                "otherwise) or give a paired folder per-side captions"
            )
        return pairs

    def load_data(self) -> None:
        """Load and check the train (and eval) pairs: before any model loads."""
        args = self.args
        self._train_pairs = self._pairs(self._raw_train, args.dataset_split)
        self._eval_pairs = None if self._raw_eval is None else self._pairs(self._raw_eval, args.eval_split)

    def build_datasets(self):
        """The model's parts (:meth:`_load_model_parts`), then the (cached) datasets, which need the VAE and text
        encoders."""
        self._load_model_parts(self._train_pairs.captions_chosen)
        eval_pairs = self._eval_pairs
        return self._pair_dataset(self._train_pairs), None if eval_pairs is None else self._held_out(eval_pairs)

    def _load_model_parts(self, captions: list[str]) -> None:
        """The model's components, the training resolution, the validation settings, and the model card's example
        prompt: one the model knows (a validation prompt, else the first of ``captions``)."""
        args = self.args
        self._card_prompt = next((p for p in [*(args.validation_prompts or []), *captions] if p), None)
        self.components = self._load_components()
        self.family = self.components.family
        self.resolution = args.resolution or self.components.adapter.native_resolution(self.components.unet,
                                                                                        self.components.vae)
        self.validation = None if not args.validation_prompts else ValidationSettings(
            tuple(args.validation_prompts), seed=args.validation_seed,
            num_inference_steps=args.validation_inference_steps, guidance_scale=args.validation_guidance_scale,
            resolution=self.resolution,
        )

    def _pair_dataset(self, pairs: PreferencePairs) -> _IndexedPairs:
        """The training dataset of ``pairs``: transformed (encoded into the cache with ``cache_dir``), indexed."""
        args = self.args
        transform = PairTransform(self.resolution, center_crop=args.center_crop, random_flip=args.random_flip)
        if args.cache_dir is None:
            train = DiffusionPreferenceDataset(pairs, transform, caption_dropout=args.caption_dropout,
                                               seed=args.seed)
        else:
            with self.accelerator.main_process_first():
                train = cached_preference_dataset(
                    pairs, transform, self.components.vae, self.components.text_encoders,
                    self.components.tokenizers, args.cache_dir, caption_dropout=args.caption_dropout, seed=args.seed,
                    vae_batch_size=args.vae_encode_batch_size, num_workers=args.dataloader_num_workers,
                    latent_dtype=getattr(torch, args.cache_latent_dtype), time_id_convention=args.sdxl_time_ids,
                    family=self.components.adapter,
                )
        return _IndexedPairs(train)

    def _held_out(self, pairs: PreferencePairs) -> _IndexedPairs:
        """The evaluation dataset of ``pairs``: centre crops, no flips, no caption dropout."""
        transform = PairTransform(self.resolution, center_crop=True, random_flip=False)
        return _IndexedPairs(DiffusionPreferenceDataset(pairs, transform, seed=self.args.seed))

    def _load_components(self) -> DiffusionComponents:
        args = self.args
        weight_dtype = MIXED_DTYPES.get(args.mixed_precision, torch.float32)
        if isinstance(self._model_spec, DiffusionComponents):
            components = self._model_spec
        else:
            components = load_diffusion_components(
                self._model_spec, revision=args.model_revision, variant=args.model_variant,
                unet_dtype=weight_dtype if args.use_lora else torch.float32, weight_dtype=weight_dtype,
                vae=args.vae, vae_subfolder=args.vae_subfolder,
            )
        device = self.accelerator.device
        for frozen in (components.vae, *components.text_encoders):
            frozen.requires_grad_(False).eval().to(device)
        return components

    def build_collator(self):
        return collate_indexed_pairs

    # ---------------------------------------------------------------------------------------------- model

    def _lora_targets(self) -> list[str]:
        """The config's ``lora_target_modules``, else the model family's (``DiffusionFamily.lora_targets``)."""
        return list(self.args.lora_target_modules or self.components.adapter.lora_targets)

    def build_model(self) -> torch.nn.Module:
        args = self.args
        unet = self.components.unet
        if args.use_lora:
            from peft import LoraConfig  # here, not at import: keeps `visalign train --help` fast

            from visalign.models.lora import check_lora_targets

            unet.requires_grad_(False)
            targets = self._lora_targets()
            check_lora_targets(unet, targets)
            unet.add_adapter(LoraConfig(
                r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                init_lora_weights="gaussian", target_modules=targets,
            ))
            for param in unet.parameters():  # trainable LoRA weights in fp32 over a low-precision base
                if param.requires_grad:
                    param.data = param.data.float()
        else:
            unet.requires_grad_(True)
        unet.train()
        self.reference_strategy = args.resolved_reference(lora=args.use_lora)
        return unet

    def enable_gradient_checkpointing(self, model: torch.nn.Module) -> None:
        """diffusers' non-reentrant activation checkpointing of the UNet blocks."""
        model.enable_gradient_checkpointing()

    def build_likelihood(self) -> DiffusionELBO:
        """The likelihood provider: the ELBO surrogate with keyed noise, on the prepared policy."""
        args = self.args
        return DiffusionELBO(
            self.components, self.noise_source, policy=self.model, seed=args.seed, device=self.accelerator.device,
            resolution=self.resolution, time_ids=args.sdxl_time_ids, vae_batch_size=args.vae_encode_batch_size,
        )

    def prepare_reference(self) -> None:
        """The likelihood provider, the reference and the objective (``visalign.objective``) over the ELBO
        surrogate."""
        self.likelihood = self.build_likelihood()
        self.reference = make_reference(self.reference_strategy, self.model, dtype=self.args.reference_torch_dtype)
        self.objective = make_objective(self.args, reference=self.reference, likelihood=self.likelihood)

    def resolved_config(self) -> DiffusionConfig:
        """The config as it ran: reference, resolution, LoRA targets, and no ``vae`` for a built-in model, which keeps
        its own (``load_diffusion_components``)."""
        builtin = isinstance(self._model_spec, str) and is_builtin(self._model_spec)
        return dataclasses.replace(self.args, reference=self.reference_strategy, resolution=self.resolution,
                                   vae=None if builtin else self.args.vae, lora_target_modules=self._lora_targets())

    # ---------------------------------------------------------------------------------------------- loss

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if batch["num_pairs"] == 0:  # every pair of this micro-batch was unreadable: a zero loss on the graph
            zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
            return zero, {}
        inputs = self.likelihood.prepare(batch, self.global_step)
        return self.objective(self.model, inputs, weights=batch.get("weights"))

    def num_examples(self, batch: dict) -> int:
        return batch["num_pairs"]

    def num_skipped(self, batch: dict) -> int:
        return batch["num_skipped"]

    # ---------------------------------------------------------------------------------------------- outputs

    def on_step_end(self, step: int) -> None:
        if self.validation is not None and self.args.validation_steps and step % self.args.validation_steps == 0:
            self.validate(step)

    def validate(self, step: int, *, tag: str = "validation") -> Path | None:
        """Render the validation prompts with the current UNet (main process), save the grid and log it."""
        if self.validation is None:
            raise ValueError("validate(): no validation_prompts in the config")
        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            logger.warning("validation images are skipped under %s (the UNet is sharded)",
                           self.accelerator.distributed_type)
            return None
        path = run_validation(self.accelerator, self.components, self.accelerator.unwrap_model(self.model),
                              self.validation, step, self.args.output_dir, tag=tag)
        self.accelerator.wait_for_everyone()
        return path

    def save_final(self, output_dir: Path) -> None:
        """diffusers LoRA weights (``pipe.load_lora_weights``) or a ``save_pretrained`` UNet, the resolved config, a
        model card, and the final validation grid."""
        acc = self.accelerator
        state_dict = acc.get_state_dict(self.model)
        unet = acc.unwrap_model(self.model)
        lora = has_lora(unet)
        if lora:
            save_diffusion_lora(output_dir, unet, self.family, state_dict=state_dict,
                                is_main_process=acc.is_main_process)
        else:
            sharded = acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
            save_diffusion_unet(output_dir, unet, state_dict=state_dict if sharded else None,
                                is_main_process=acc.is_main_process)
        config = self.resolved_config()
        if acc.is_main_process:  # before validation: a failure there still leaves a complete model folder
            save_config(config, output_dir / CONFIG_FILE)
            self._write_card(output_dir, config, lora, grid=None)
        grid = self.validate(self.global_step, tag="final") if self.validation is not None else None
        if grid is not None:  # main process only
            self._write_card(output_dir, config, lora, grid=grid)

    def _write_card(self, output_dir: Path, config: DiffusionConfig, lora: bool, grid: Path | None) -> None:
        base = self._model_spec if isinstance(self._model_spec, str) else "a Stable Diffusion model"
        keys = ("method", "loss_type", "beta", "reference", "noise_source", "resolution", "learning_rate",
                "per_device_batch_size", "gradient_accumulation_steps", "caption_dropout", "lora_r", "lora_alpha")
        settings = {key: getattr(config, key) for key in keys if lora or not key.startswith("lora")}
        settings["steps"] = self.global_step
        write_model_card(output_dir, base_model=base, family=self.family, method=config.method, lora=lora,
                         settings=settings, validation_image=None if grid is None else
                         str(Path(grid).relative_to(output_dir)),
                         **({"prompt": self._card_prompt} if self._card_prompt else {}))


def run(config: DiffusionConfig) -> dict[str, float]:
    """Train as ``config`` says (``visalign train`` with ``method:`` diffusion-dpo, mapo, dcpo or inpo)."""
    return DiffusionTrainer(config).train()
