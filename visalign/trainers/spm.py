"""Training SPO's step-aware preference model (SPM; Liang et al., CVPR 2025, arXiv 2406.04314; reference
``diffusion-methods.md`` §6.3, ``flow-and-online.md`` §1) from the command line: ``method: spm``.

Per micro-batch of B preference pairs (rows ``[chosen; rejected]``):

1. the VAE latents of both images (posterior mean, as the diffusion trainer's);
2. per pair, ``t ~ U[timestep_min, timestep_max)`` and ONE ``ε`` shared by its two images, keyed by
   ``(seed, step, pair index)`` (``visalign.likelihood.diffusion.pair_noise_seed``), so a resumed run and any number
   of processes draw the same; ``x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε``;
3. one classifier-free-guided forward of the frozen diffusion model on each ``x_t`` (``guidance_scale``, SPO: 5)
   gives DDIM's predicted ``x̂0`` (Song et al. 2021, Eq. 12), decoded by the VAE, all without gradients;
4. the SPM (``reward_models.step_aware``, started from the PickScore-style CLIP ``spm_init``) scores both decoded
   ``x̂0`` at ``t`` with gradients; the loss is PickScore's 2-way cross-entropy (ties 0.5/0.5,
   :func:`~reward_models.step_aware.step_aware_preference_loss`), pairs weighted by ``1 / pairs of their prompt``.

Labels: the data's (chosen first; Pick-a-Pic ties kept as 0.5 with ``keep_ties``), or, with ``label_scorer``, that
scorer's preference between the two clean images, a tie when ``|p0 − p1| <= tie_margin`` (SPO's SDXL SPM: PickScore,
0.1). Evaluation: the accuracy (and loss) over the non-tie pairs of ``eval_dataset`` at each of ``eval_timesteps``
(SPO: 0, 251, 501, 701, 951), every pair noised with the same ``eval_noise_draws`` keyed ``ε`` at all of them and
the accuracy averaged over those draws (``eval_accuracy/t=T``; SPO reports one draw, which on a few hundred pairs
moves the accuracy by several points); with ``eval_baseline_scorer``, a plain scorer's accuracy on the same ``x̂0``
beside it (``eval_baseline_accuracy/t=T``).
One process only: the scorer runs the SPM's modules directly, so a DDP wrapper would not synchronise gradients.

The final folder is the SPM's ``save_pretrained`` (``load_scorer("step-aware", model=output_dir)``), the resolved
``config.yaml`` and a model card. Differences from SPO's code: labels from a scorer are computed on the fly, on the
training-resolution crops; the SPM's modulation starts at the identity (``reward_models.step_aware``).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from reward_models.step_aware import EVAL_TIMESTEPS, step_aware_preference_loss
from visalign.config_io import save_config
from visalign.data.diffusion import SCHEMAS, SKIPPED, DiffusionPreferenceDataset, load_preference_pairs
from visalign.data.image_transforms import PairTransform
from visalign.likelihood.diffusion import NoisedLatents, pair_noise_seed
from visalign.likelihood.noise import RandomNoise
from visalign.likelihood.transition import predicted_original_sample
from visalign.models.card import CARD, front_matter, settings_table
from visalign.models.diffusion import decode_latents, encode_images, load_diffusion_components
from visalign.sampling.ddim import guided_output
from visalign.trainers._common import CONFIG_FILE, MIXED_DTYPES
from visalign.trainers._loop import Trainer
from visalign.trainers.config import TrainingConfig, _help
from visalign.trainers.diffusion import _IndexedPairs, collate_indexed_pairs

#: The step key of the evaluation noise, draw 0 (draw d: ``EVAL_NOISE_KEY - d``; training steps are keys 0, 1, ...).
EVAL_NOISE_KEY = 2**32 - 1
MAX_EVAL_NOISE_DRAWS = 1000


@dataclass
class SPMConfig(TrainingConfig):
    """SPO's step-aware preference model trained on a frozen diffusion model's predicted x0 (module docstring)."""

    TRAINER: ClassVar[str] = "spm"

    method: str = field(default="spm", metadata=_help("the method to train (`visalign train` picks its trainer)"))
    model: str | None = field(default=None, metadata=_help(
        "the frozen diffusion checkpoint whose predicted x0 the SPM learns to judge (SPO: SD1.5 for SD1.5's SPM)"))
    spm_init: str | None = field(default=None, metadata=_help(
        "PickScore-style CLIP folder or hub id the SPM starts from (SPO: yuvalkirstain/PickScore_v1)"))
    learning_rate: float = field(default=3e-6, metadata=_help("AdamW learning rate (SPO: 3e-6 SD1.5, 1e-6 SDXL)"))
    weight_decay: float = field(default=0.3, metadata=_help("AdamW weight decay (SPO: 0.3)"))
    lr_scheduler: str = field(default="constant", metadata=_help("transformers learning-rate schedule"))
    per_device_batch_size: int = field(default=8, metadata=_help("preference pairs per device per micro-batch"))
    vae: str | None = field(default=None, metadata=_help(
        "separate (fp16-safe) VAE, e.g. madebyollin/sdxl-vae-fp16-fix; none = the model's own, in fp32"))
    vae_subfolder: str | None = field(default=None, metadata=_help("subfolder of `vae` holding the VAE"))
    vae_encode_batch_size: int = field(default=8, metadata=_help("images per VAE forward when encoding latents"))
    data_schema: str = field(default="auto", metadata=_help(f"dataset schema: {' | '.join(SCHEMAS)}"))
    keep_ties: bool = field(default=True, metadata=_help(
        "Pick-a-Pic: keep ties, trained towards 0.5/0.5 as PickScore (false: drop them)"))
    chosen_column: str = field(default="chosen", metadata=_help("generic schema: chosen image column"))
    rejected_column: str = field(default="rejected", metadata=_help("generic schema: rejected image column"))
    caption_column: str = field(default="caption", metadata=_help("caption column"))
    resolution: int | None = field(default=None, metadata=_help(
        "pixels the images are cropped to and encoded at; none = the UNet's native size (SD1.5 512, SDXL 1024)"))
    center_crop: bool = field(default=True, metadata=_help("centre crop (true) or random crop (false) of the pair"))
    random_flip: bool = field(default=False, metadata=_help("flip both images of a pair with probability 0.5"))
    guidance_scale: float = field(default=5.0, metadata=_help("CFG scale of the x0 prediction (SPO: 5)"))
    timestep_min: int = field(default=0, metadata=_help("t ~ U[timestep_min, timestep_max) per pair"))
    timestep_max: int = field(default=1000, metadata=_help("exclusive upper end of the training timesteps"))
    label_scorer: str | None = field(default=None, metadata=_help(
        "reward_models scorer labelling each pair from its clean images (SPO's SDXL SPM: pickscore); none = the "
        "data's labels"))
    label_scorer_model: str | None = field(default=None, metadata=_help("hub id or folder of the label scorer"))
    tie_margin: float = field(default=0.0, metadata=_help(
        "with label_scorer: a tie (0.5/0.5) when |p0 - p1| <= tie_margin (SPO: 0.1)"))
    eval_timesteps: list[int] = field(default_factory=lambda: list(EVAL_TIMESTEPS), metadata=_help(
        "timesteps the eval_dataset accuracy is reported at (SPO: 0, 251, 501, 701, 951)"))
    eval_noise_draws: int = field(default=1, metadata=_help(
        "noise draws (t fixed, ε keyed per pair and draw) each eval pair is judged under at each eval timestep; the "
        "accuracies are their mean (SPO: 1)"))
    eval_baseline_scorer: str | None = field(default=None, metadata=_help(
        "a plain reward_models scorer judged on the same predicted x0 in evaluation (eval_baseline_accuracy/t=T), "
        "the step-unaware baseline the SPM must beat at large t; none = off"))
    eval_baseline_scorer_model: str | None = field(default=None, metadata=_help("hub id or folder of that scorer"))

    def __post_init__(self) -> None:
        super().__post_init__()
        c = type(self).__name__
        checks = [
            (not self.use_lora, "use_lora", "false (the SPM is trained in full, as SPO's)", self.use_lora),
            (self.data_schema in SCHEMAS, "data_schema", " | ".join(SCHEMAS), self.data_schema),
            (self.resolution is None or (self.resolution >= 8 and self.resolution % 8 == 0), "resolution",
             "none or a positive multiple of 8 (the VAE downsamples by 8)", self.resolution),
            (self.guidance_scale >= 0, "guidance_scale", ">= 0", self.guidance_scale),
            (0 <= self.timestep_min < self.timestep_max, "timestep_min", f"in [0, timestep_max {self.timestep_max})",
             self.timestep_min),
            (0 <= self.tie_margin < 1, "tie_margin", "in [0, 1)", self.tie_margin),
            (self.label_scorer is not None or not self.tie_margin, "tie_margin", "0 without label_scorer (the "
             "data's labels are used)", self.tie_margin),
            (bool(self.eval_timesteps) and all(isinstance(t, int) and t >= 0 for t in self.eval_timesteps),
             "eval_timesteps", "a non-empty list of integers >= 0", self.eval_timesteps),
            (self.vae_encode_batch_size >= 1, "vae_encode_batch_size", ">= 1", self.vae_encode_batch_size),
            (1 <= self.eval_noise_draws <= MAX_EVAL_NOISE_DRAWS, "eval_noise_draws",
             f"in [1, {MAX_EVAL_NOISE_DRAWS}]", self.eval_noise_draws),
        ]
        for ok, key, expected, value in checks:
            if not ok:
                raise ValueError(f"{c}.{key} must be {expected}; got {value!r}")
        from reward_models import list_scorers

        for key in ("label_scorer", "eval_baseline_scorer"):
            if getattr(self, key) not in (None, *list_scorers()):
                raise ValueError(f"{c}.{key} must be one of {', '.join(list_scorers())}; got {getattr(self, key)!r}")


@dataclass(frozen=True)
class TimestepRangeNoise(RandomNoise):
    """:class:`~visalign.likelihood.noise.RandomNoise` (t and ε shared within the pair) with ``t ~ U[low, high)``;
    over the whole schedule it draws exactly what ``RandomNoise`` draws."""

    low: int = 0
    high: int = 1000

    def __call__(self, latents, *, scheduler, unet=None, cond=None, generator=None, denoise=None) -> NoisedLatents:
        t = torch.randint(self.low, self.high, (1,), generator=generator).to(latents.device)
        return self.noise_at(latents, t.repeat(2), scheduler, unet, cond, generator)


class _LabelledPairs(_IndexedPairs):
    """Indexed pairs whose items carry ``label_0``: 1 (chosen first), 0.5 for a tie."""

    def __init__(self, dataset, ties):
        super().__init__(dataset)
        self.ties = ties

    def __getitem__(self, index: int) -> dict:
        tie = self.ties is not None and bool(self.ties[index])
        return {**super().__getitem__(index), "label_0": 0.5 if tie else 1.0}


def collate_labelled_pairs(items: list[dict]) -> dict:
    """``collate_indexed_pairs`` plus ``label_0`` ``[B]`` of the kept pairs."""
    batch = collate_indexed_pairs(items)
    batch["label_0"] = torch.tensor([item["label_0"] for item in items if SKIPPED not in item])
    return batch


class SPMTrainer(Trainer):
    """Trains the step-aware preference model (module docstring) on the shared accelerate loop."""

    def __init__(self, args: SPMConfig) -> None:
        if not isinstance(args, SPMConfig):
            raise TypeError(f"SPMTrainer needs an SPMConfig; got {type(args).__name__}")
        for key in ("model", "spm_init", "dataset"):
            if getattr(args, key) is None:
                raise ValueError(f"SPMConfig.{key} must be set (the diffusion model, the CLIP to start from, the "
                                 "preference pairs)")
        self._evaluating = False
        super().__init__(args)

    # ---------------------------------------------------------------------------------------------- data

    def _pairs(self, spec: str, split: str, *, weighted: bool):
        a = self.args
        pairs = load_preference_pairs(spec, schema=a.data_schema, split=split, keep_ties=a.keep_ties,
                                      chosen_column=a.chosen_column, rejected_column=a.rejected_column,
                                      caption_column=a.caption_column)
        if len(pairs) == 0:
            raise ValueError(f"{pairs.name}: no preference pairs (report: {pairs.report})")
        pairs.check_readable()
        if weighted:  # SPO: each example weighted by 1 / num_examples_per_prompt
            counts = Counter(pairs.captions_chosen)
            pairs = dataclasses.replace(pairs, weights=[1.0 / counts[c] for c in pairs.captions_chosen])
        return pairs

    def load_data(self) -> None:
        args = self.args
        if self.accelerator.num_processes > 1:  # the scorer runs the SPM's modules, not a DDP wrapper's forward
            raise ValueError("method spm runs on one process: its gradients would not be synchronised across "
                             f"{self.accelerator.num_processes}")
        self._train_pairs = self._pairs(args.dataset, args.dataset_split, weighted=True)
        self._eval_pairs = None if args.eval_dataset is None else self._pairs(args.eval_dataset, args.eval_split,
                                                                             weighted=False)

    def build_datasets(self):
        """The frozen diffusion components and label scorer, then the transformed, labelled pair datasets."""
        args, device = self.args, self.accelerator.device
        dtype = MIXED_DTYPES.get(args.mixed_precision, torch.float32)
        self.components = load_diffusion_components(args.model, unet_dtype=dtype, weight_dtype=dtype, vae=args.vae,
                                                    vae_subfolder=args.vae_subfolder, device=device)
        self.components.unet.requires_grad_(False).eval()
        steps = self.components.scheduler.config.num_train_timesteps
        for key, value in (("timestep_max", args.timestep_max), ("eval_timesteps", max(args.eval_timesteps) + 1)):
            if value > steps:
                raise ValueError(f"SPMConfig.{key}: {getattr(args, key)!r} is past {args.model}'s {steps} training "
                                 "timesteps")
        self.resolution = args.resolution or self.components.adapter.native_resolution(self.components.unet,
                                                                                        self.components.vae)
        self.label_scorer = _load_scorer(args.label_scorer, args.label_scorer_model, device)
        self.baseline_scorer = _load_scorer(args.eval_baseline_scorer, args.eval_baseline_scorer_model, device)
        train = PairTransform(self.resolution, center_crop=args.center_crop, random_flip=args.random_flip)
        datasets = [_LabelledPairs(DiffusionPreferenceDataset(self._train_pairs, train, seed=args.seed),
                                   self._train_pairs.ties)]
        if self._eval_pairs is not None:
            held_out = PairTransform(self.resolution, center_crop=True, random_flip=False)
            datasets.append(_LabelledPairs(DiffusionPreferenceDataset(self._eval_pairs, held_out, seed=args.seed),
                                           self._eval_pairs.ties))
        return datasets[0], datasets[1] if len(datasets) > 1 else None

    def build_collator(self):
        return collate_labelled_pairs

    # ---------------------------------------------------------------------------------------------- model

    def build_model(self) -> torch.nn.Module:
        """The SPM started from ``spm_init`` (untrained: it scores as that CLIP), all of it trainable."""
        from reward_models import load_scorer

        self.spm = load_scorer("step-aware", model=self.args.spm_init, init_from_clip=True,
                               device=self.accelerator.device)
        return self.spm.model.requires_grad_(True).train()

    def resolved_config(self) -> SPMConfig:
        return dataclasses.replace(self.args, resolution=self.resolution)

    # ---------------------------------------------------------------------------------------------- loss

    def labels(self, batch: dict) -> torch.Tensor:
        """``label_0`` of the batch's pairs (chosen = image 0): the data's, or the label scorer's on the clean
        images, a tie when ``|p0 − p1| <= tie_margin``. Kept in ``batch["label_0"]``."""
        if self.label_scorer is not None and "labelled" not in batch:
            pixels = (batch["pixel_values"].float() + 1) / 2
            chosen, rejected = pixels.chunk(2)
            with torch.no_grad():
                p0 = self.label_scorer.preference(batch["captions_chosen"], chosen, rejected).probs.double().cpu()
            batch["label_0"] = torch.where((2 * p0 - 1).abs() <= self.args.tie_margin, 0.5, (p0 > 0.5).double())
            batch["labelled"] = True
        return batch["label_0"]

    @torch.no_grad()
    def latents(self, batch: dict) -> torch.Tensor:
        """The VAE latents (posterior mean) of the batch's images, ``[chosen; rejected]``."""
        return encode_images(self.components.vae, batch["pixel_values"], batch_size=self.args.vae_encode_batch_size,
                             sample=False).to(self.accelerator.device)

    @torch.no_grad()
    def predicted_x0(self, batch: dict, noise_key: int, timesteps: int | None = None, *,
                     latents: torch.Tensor | None = None) -> tuple[torch.Tensor, NoisedLatents]:
        """The decoded guided ``x̂0`` ``[2B, 3, res, res]`` in [0, 1] the SPM judges, and the noised latents it came
        from: per pair one ``(t, ε)`` shared by both images, keyed by ``(seed, noise_key, pair index)``; ``t`` drawn
        from the training range, or ``timesteps`` for every pair. ``latents`` (:meth:`latents`) saves re-encoding a
        batch judged several times."""
        args, comp = self.args, self.components
        device = self.accelerator.device
        latents = self.latents(batch) if latents is None else latents
        b = batch["num_pairs"]
        parts = []
        for i, index in enumerate(batch["indices"]):
            generator = torch.Generator().manual_seed(pair_noise_seed(args.seed, noise_key, index))
            pair = latents[[i, b + i]]
            if timesteps is None:
                source = TimestepRangeNoise(args.timestep_min, args.timestep_max)
                parts.append(source(pair, scheduler=comp.scheduler, generator=generator))
            else:
                fixed = torch.full((2,), timesteps, dtype=torch.long, device=device)
                parts.append(RandomNoise().noise_at(pair, fixed, comp.scheduler, None, None, generator))
        noised = NoisedLatents(*(torch.cat([getattr(p, f.name)[side:side + 1] for side in (0, 1) for p in parts])
                                 for f in dataclasses.fields(NoisedLatents)))  # [chosen; rejected]
        with torch.autocast(device_type=device.type, enabled=False):
            cond = comp.adapter.sampling_conditioning(comp, batch["captions_chosen"] + batch["captions_rejected"],
                                                      resolution=self.resolution)
        output = guided_output(comp, comp.unet, noised.noisy_latents, noised.timesteps, cond, args.guidance_scale)
        x0, _ = predicted_original_sample(comp.scheduler, output, noised.timesteps, noised.noisy_latents)
        pixels = (decode_latents(comp.vae, x0).clamp(-1, 1) + 1) / 2
        return pixels, noised

    def spm_loss(self, batch: dict, pixels: torch.Tensor, timesteps: torch.Tensor, *, decided_only: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, accuracy)`` of the SPM on the batch's decoded ``x̂0`` (:meth:`predicted_x0`) at ``timesteps``."""
        prompts = batch["captions_chosen"] + batch["captions_rejected"]
        scores = self.spm.score_tensor(pixels, prompts, timesteps=timesteps).scores
        s0, s1 = scores.chunk(2)
        labels, weights = self.labels(batch).to(s0.device), batch.get("weights")
        if decided_only:
            keep = labels != 0.5
            s0, s1, labels = s0[keep], s1[keep], labels[keep]
            weights = None if weights is None else weights[keep.cpu()]
        return step_aware_preference_loss(s0, s1, labels, weights)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if batch["num_pairs"] == 0:  # every pair of this micro-batch was unreadable: a zero loss on the graph
            return sum(p.sum() for p in self.model.parameters()) * 0.0, {}
        if self._evaluating:
            return self._evaluation_loss(batch)
        pixels, noised = self.predicted_x0(batch, self.global_step)
        loss, accuracy = self.spm_loss(batch, pixels, noised.timesteps)
        metrics = {"accuracy": accuracy.item()} if not accuracy.isnan() else {}
        return loss, metrics

    def _evaluation_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss and accuracy over the non-tie pairs at each evaluation timestep, each the mean over
        ``eval_noise_draws`` noise draws (their means over the timesteps as ``loss`` and ``accuracy``); a batch of
        ties only weighs 0 (:meth:`num_examples`)."""
        names = ("loss", "accuracy") + (("baseline_accuracy",) if self.baseline_scorer is not None else ())
        labels = self.labels(batch)
        metrics = {f"{name}/t={t}": 0.0 for t in self.args.eval_timesteps for name in names}
        if not (labels != 0.5).any():
            return torch.zeros(()), {**metrics, "accuracy": 0.0}
        draws, latents, decided = self.args.eval_noise_draws, self.latents(batch), labels != 0.5
        for t in self.args.eval_timesteps:
            for draw in range(draws):
                pixels, noised = self.predicted_x0(batch, EVAL_NOISE_KEY - draw, t, latents=latents)
                loss, accuracy = self.spm_loss(batch, pixels, noised.timesteps, decided_only=True)
                metrics[f"loss/t={t}"] += loss.item() / draws
                metrics[f"accuracy/t={t}"] += accuracy.item() / draws
                if self.baseline_scorer is not None:
                    chosen, rejected = pixels.chunk(2)
                    p0 = self.baseline_scorer.preference(batch["captions_chosen"], chosen, rejected).probs.cpu()
                    correct = torch.where(labels[decided] > 0.5, p0[decided] > 0.5, p0[decided] < 0.5)
                    metrics[f"baseline_accuracy/t={t}"] += correct.float().mean().item() / draws
        n = len(self.args.eval_timesteps)
        metrics["accuracy"] = sum(metrics[f"accuracy/t={t}"] for t in self.args.eval_timesteps) / n
        return torch.tensor(sum(metrics[f"loss/t={t}"] for t in self.args.eval_timesteps) / n), metrics

    def num_examples(self, batch: dict) -> int:
        """Pairs in the batch; in evaluation the non-tie pairs (the accuracy is theirs)."""
        if self._evaluating and batch["num_pairs"]:
            return int((self.labels(batch) != 0.5).sum())
        return batch["num_pairs"]

    def num_skipped(self, batch: dict) -> int:
        return batch["num_skipped"]

    @torch.no_grad()
    def evaluate(self, dataset=None, *, prefix: str = "eval") -> dict[str, float]:
        """The loop's evaluation with the SPM's metrics at each of ``eval_timesteps`` (``eval_accuracy/t=T``)."""
        self._evaluating = True
        try:
            return super().evaluate(dataset, prefix=prefix)
        finally:
            self._evaluating = False

    # ---------------------------------------------------------------------------------------------- outputs

    def save_final(self, output_dir: Path) -> None:
        """``save_pretrained`` of the SPM into ``output_dir`` (written beside, then moved in: the SPM's own save
        replaces its folder), the resolved config and the model card."""
        if not self.accelerator.is_main_process:
            return
        staging = self.spm.save_pretrained(output_dir / ".spm-final")
        for path in staging.iterdir():
            target = output_dir / path.name
            if target.is_dir():
                shutil.rmtree(target)
            path.replace(target)
        staging.rmdir()
        config = self.resolved_config()
        save_config(config, output_dir / CONFIG_FILE)
        keys = ("model", "spm_init", "guidance_scale", "timestep_min", "timestep_max", "label_scorer", "tie_margin",
                "learning_rate", "weight_decay", "per_device_batch_size", "gradient_accumulation_steps", "resolution")
        settings = {**{key: getattr(config, key) for key in keys}, "steps": self.global_step}
        (output_dir / CARD).write_text(
            f"{front_matter(config.spm_init, 'transformers', ['visalign', 'spm', 'step-aware', 'reward-model'])}\n"
            f"# Step-aware preference model (SPO's SPM) for {config.model}\n\n"
            f"Started from {config.spm_init} and trained with visalign (`method: spm`) to judge the predicted x0 of "
            f"{config.model} at any timestep (Liang et al., CVPR 2025). The resolved config is in `config.yaml`."
            f"\n\n## Use\n\n```python\nfrom reward_models import load_scorer\n\n"
            f"spm = load_scorer(\"step-aware\", model={str(output_dir)!r})\n"
            f"spm.score(images, \"a prompt\", timesteps=501)\n```\n\n## Training settings\n\n"
            f"{settings_table(settings)}", encoding="utf-8")


def _load_scorer(name: str | None, model: str | None, device):
    """``load_scorer(name, model=model)`` on ``device``; ``None`` without a name."""
    if name is None:
        return None
    from reward_models import load_scorer

    return load_scorer(name, device=device, **({} if model is None else {"model": model}))


def run(config: SPMConfig) -> dict[str, float]:
    """Train the SPM as ``config`` says (``visalign train`` with ``method: spm``)."""
    return SPMTrainer(config).train()
