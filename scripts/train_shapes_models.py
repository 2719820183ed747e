"""Train the shapes world's small text-to-image models (Stable Diffusion and SDXL architectures), seeded and reproducible.

    python scripts/train_shapes_models.py --out visalign/assets/shapes-sd          # builtin:shapes-sd
    python scripts/train_shapes_models.py --arch sdxl --vae-from visalign/assets/shapes-sd/vae \
        --unet-steps 2000 --ema-decay 0 --out visalign/assets/shapes-sdxl          # builtin:shapes-sdxl
    python scripts/train_shapes_models.py --out /tmp/shapes-sd --quick             # ~1 min smoke run

Stages, after ``shared/reference/shapes-world-probe.md``:

1. render ``num_images`` seeded scenes with prompts (``visalign.shapes``; colour and shape always named, the other
   attributes each with probability 0.75) at 32 px;
2. train an ``AutoencoderKL`` (2 blocks (32, 64), 4 latent channels, 32 px -> 16x16 latents) on MSE + a tiny KL;
   its ``scaling_factor`` is set to 1 / std of the cached latents (SD's convention);
3. cache every image's posterior mean and std once: the denoiser stage never runs the VAE encoder;
4. train ``UNet2DConditionModel`` (48, 96) and ``CLIPTextModel`` (hidden 64, 2 layers) jointly on the ε-loss with
   10% caption dropout (the empty prompt, as classifier-free guidance uses it), 3,000 steps, and keep an exponential
   moving average of their weights (decay 0.999 after diffusers' ``EMAModel`` warm-up (1 + k)/(10 + k), here from step
   k = 1 and one step ahead of it), which is what is saved. A frozen random text encoder cannot carry the colour
   words (probe), hence the joint training;
5. save a ``StableDiffusionPipeline`` (``save_pretrained``, safetensors; DDIM sampling scheduler with SD's
   ``scaled_linear`` betas; word-level CLIP-style tokenizer from ``visalign.testing.tokenizers``) that loads with
   ``StableDiffusionPipeline.from_pretrained(out)``; ``train_config.json`` beside it;
6. reload it, sample fixed held-out prompts (DDIM, low guidance) and score them with the ``shapes`` scorer:
   ``metrics.json`` (mean reward, per-component accuracy, stage timings) and ``samples.png``.

The model is meant to draw recognisable shapes while following the prompt only partly, which leaves alignment room.
The first ``builtin:shapes-sd`` (2,000 steps, no average) drew blobs: shape right 28% of the time at CFG 1.5 (chance
20%), so most of what an aligned model could gain was drawing itself, which preference training on its own samples
barely teaches. The averaged 3,000-step model draws crisp shapes and gets the shape right 47% of the time (colour 97%,
size 87%, background 100%, mean reward 0.79 at CFG 1.5, 25 DDIM steps; 0.73 at CFG 1, 10 steps, where the best of 4
samples scores 0.87): the room left is in following the prompt. ``caption_noise`` (captions that name a wrong value
of an attribute) is another way to leave room; at 0.25 it cost the 3,000-step model much more than the noise rate
(shape 22%, background 48%), so the shipped model has none.

The shipped ``builtin:shapes-sd`` was trained with ``--vae-from`` its own earlier VAE (stage 2 of this script with
the same seed and settings; the denoiser stage draws from its own generators, so a full run should write the same
weights, which has not been checked end to end): UNet + text encoder 0.97 s/step at batch 32 on one thread
of a 2-core CPU beside another training run -> 3,000 steps in 48 min (``train.log``).

Run time on a 2-core CPU (torch 2.14 CPU; measured on a machine shared with other jobs, so per-step costs swung
2-4x with the load): ``--quick`` ran end to end in 68-76 s (rendering 0.2 s, VAE 0.28 s/step at batch 16, latent cache
1.1 s, UNet + text encoder 0.33 s/step at batch 16 when idle and 1.4 s/step when contended, reload + sampling + scoring
8 prompts 1.3 s). Full settings: VAE 0.54 s/step at batch 32 idle (2.2 contended) -> 500 steps ≈ 4.5 min; UNet + text
encoder (2.4M + 74k parameters) 0.67 s/step at batch 32 -> 3,000 steps ≈ 34 min; rendering 8,000 scenes ≈ 7 s, cache
≈ 15 s, evaluation of 60 prompts x 25 DDIM steps ≈ 20 s. Full run ≈ 39 min on an idle 2-core CPU. Two runs with the
same seed write byte-identical weights (checked with ``--quick``). The saved folder is 13 MB (fp32 safetensors).

``--arch sdxl`` (``builtin:shapes-sdxl``) reuses the SD model's trained VAE (``--vae-from``: stage 2 is skipped and the
VAE, scaling factor included, is saved unchanged) and trains an SDXL-layout UNet (2.27M parameters) with SDXL's two
text encoders (21k parameters each) jointly, saved as a ``StableDiffusionXLPipeline`` with an Euler scheduler. Run on
an idle 2-core CPU: UNet + text encoders 0.36 s/step at batch 32 -> 2,000 steps ≈ 12 min, 12.5 min in all; at CFG
1.5, 25 Euler steps on the 60 held-out prompts: mean shapes reward 0.67, colour 0.82, shape 0.37, size 0.77,
background 0.87 (``metrics.json``, ``samples.png``, ``train.log`` beside the weights).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel

from _shapes_common import add_config_flags, config_from_args, log_progress
from reward_models.shapes import ShapesScorer
from visalign.models.diffusion import embed_token_ids, sdxl_time_ids, tokenize_prompts
from visalign.shapes.render import render_batch
from visalign.shapes.world import ATTRIBUTES, OPTIONS, SHAPES, VOCABULARY, describe, parse_prompt, sample_scene
from visalign.testing.clip import clip_text_config, seeded
from visalign.testing.diffusion import DiffusionShape, tiny_sdxl_components
from visalign.testing.tokenizers import clip_style_tokenizer

PIPELINES = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}

#: The SDXL-architecture denoiser: SDXL's block layout (no attention at the top level; cross-attention at the lower
#: level and in the mid block; linear attention projections) at the SD model's widths, and two text encoders of half
#: the SD encoder's width, so the UNet attends to 64-d tokens as the SD model does. Added conditioning:
#: 6 time ids x 8 + the 32-d pooled embedding = 80 inputs (SDXL: 6 x 256 + 1280).
SDXL_SHAPE = DiffusionShape(unet_channels=(48, 96), attention_heads=4, vae_channels=(32, 64), norm_num_groups=16,
                            text_hidden_size=32, text_layers=2, text_heads=4, pooled_dim=32, addition_time_embed_dim=8)


@dataclass(frozen=True)
class TrainConfig:
    arch: str = field(default="sd", metadata={"help": f"architecture: {' | '.join(PIPELINES)} (the pipeline class)"})
    vae_from: str = field(default="", metadata={"help": "folder of a trained AutoencoderKL to reuse (e.g. "
                                                        "visalign/assets/shapes-sd/vae): skips the VAE stage"})
    seed: int = field(default=0, metadata={"help": "seeds rendering, initialisation, batches and sampling"})
    resolution: int = field(default=32, metadata={"help": "image side in pixels"})
    num_images: int = field(default=8000, metadata={"help": "rendered training scenes"})
    mention_probability: float = field(default=0.75, metadata={"help": "P(prompt names size / position / background)"})
    vae_steps: int = field(default=500, metadata={"help": "VAE optimiser steps"})
    vae_batch_size: int = field(default=32, metadata={"help": "VAE batch size"})
    vae_lr: float = field(default=1e-3, metadata={"help": "VAE AdamW learning rate"})
    kl_weight: float = field(default=1e-6, metadata={"help": "weight of the VAE's KL term (SD-style, tiny)"})
    unet_steps: int = field(default=3000, metadata={"help": "UNet + text encoder optimiser steps"})
    unet_batch_size: int = field(default=32, metadata={"help": "UNet batch size"})
    unet_lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the UNet and the text encoder"})
    warmup_steps: int = field(default=100, metadata={"help": "linear learning-rate warm-up of both stages"})
    caption_dropout: float = field(default=0.1, metadata={"help": "P(caption replaced by the empty prompt)"})
    caption_noise: float = field(default=0.0, metadata={"help": "P(a caption names another value of an attribute "
                                                                "it names), per attribute: noisy captions"})
    ema_decay: float = field(default=0.999, metadata={"help": "decay of the exponential moving average of the "
                                                            "denoiser's weights that is saved (0: save the last)"})
    eval_prompts: int = field(default=60, metadata={"help": "held-out prompts sampled and scored at the end"})
    eval_steps: int = field(default=25, metadata={"help": "sampler steps of the evaluation (the saved scheduler)"})
    eval_guidance: float = field(default=1.5, metadata={"help": "classifier-free guidance scale of the evaluation"})

    def __post_init__(self):
        if self.arch not in PIPELINES:
            raise ValueError(f"arch must be one of {sorted(PIPELINES)}; got {self.arch!r}")
        for key in ("caption_dropout", "caption_noise", "ema_decay"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        if self.resolution % 4:
            raise ValueError(f"resolution must be a multiple of 4 (VAE factor 2 x UNet factor 2), got {self.resolution}")


QUICK = {"num_images": 512, "vae_steps": 30, "vae_batch_size": 16, "unet_steps": 40, "unet_batch_size": 16,
         "warmup_steps": 5, "eval_prompts": 8, "eval_steps": 10}


class TextConditioning(torch.nn.Module):
    """The prompt side of the denoiser, trained with the UNet: SD's one text encoder (last hidden state) or SDXL's two
    (penultimate hidden states concatenated, pooled embedding of encoder 2, fixed ``time_ids``), as
    ``visalign.models.diffusion.encode_prompts`` conditions the UNet."""

    def __init__(self, tokenizers, text_encoders, time_ids: torch.Tensor | None = None):
        super().__init__()
        self.tokenizers = tuple(tokenizers)
        self.text_encoders = torch.nn.ModuleList(text_encoders)
        self.time_ids = time_ids

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """``[N, E, L]``: the ids of every prompt under each of the E tokenizers."""
        return torch.stack([tokenize_prompts(tokenizer, prompts) for tokenizer in self.tokenizers], dim=1)

    def unet_kwargs(self, ids: torch.Tensor) -> dict:
        """The UNet's conditioning arguments for ``[N, E, L]`` ids (with autograd)."""
        embeddings = embed_token_ids(self.text_encoders, ids.unbind(1))
        if self.time_ids is None:
            return {"encoder_hidden_states": embeddings.hidden_states}
        time_ids = self.time_ids.to(embeddings.pooled.device).expand(len(ids), -1)
        return {"encoder_hidden_states": embeddings.hidden_states,
                "added_cond_kwargs": {"text_embeds": embeddings.pooled, "time_ids": time_ids}}


def build_denoiser(config: TrainConfig) -> tuple[TextConditioning, UNet2DConditionModel, object]:
    """Text conditioning, UNet and sampling scheduler of ``config.arch``, freshly initialised from ``config.seed``.

    ``sd``: one ``CLIPTextModel``, cross-attention at both UNet levels, DDIM. ``sdxl``: ``tiny_sdxl_components`` at
    :data:`SDXL_SHAPE` (its VAE is not used), time ids (orig size, crop (0, 0), target size) = the resolution, Euler
    (SDXL's sampler). Both use SD's ``scaled_linear`` betas.
    """
    if config.arch == "sdxl":
        parts = tiny_sdxl_components(shape=replace(SDXL_SHAPE, image_size=config.resolution), seed=config.seed,
                                     words=VOCABULARY)
        size = (config.resolution, config.resolution)
        conditioning = TextConditioning((parts["tokenizer"], parts["tokenizer_2"]),
                                        (parts["text_encoder"], parts["text_encoder_2"]),
                                        time_ids=sdxl_time_ids([size], [(0, 0)], size))
        return conditioning, parts["unet"], EulerDiscreteScheduler.from_config(parts["scheduler"].config)
    tokenizer = clip_style_tokenizer(VOCABULARY)
    with seeded(config.seed):
        text_encoder = CLIPTextModel(clip_text_config(tokenizer, hidden_size=64, num_layers=2, num_heads=4,
                                                      projection_dim=64))
    with seeded(config.seed + 2):
        unet = UNet2DConditionModel(
            sample_size=config.resolution // 2, in_channels=4, out_channels=4, block_out_channels=(48, 96),
            layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
            attention_head_dim=4, norm_num_groups=16,
        )
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type="epsilon", timestep_spacing="leading")
    return TextConditioning((tokenizer,), (text_encoder,)), unet, scheduler


def build_vae(config: TrainConfig) -> AutoencoderKL:
    """The VAE: loaded from ``config.vae_from`` (frozen), else freshly initialised from ``config.seed``."""
    if not config.vae_from:
        with seeded(config.seed + 1):
            return AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                 up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                                 norm_num_groups=32, sample_size=config.resolution)
    folder = Path(config.vae_from)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--vae-from {folder}: no config.json there; expected an AutoencoderKL "
                                "save_pretrained folder (e.g. visalign/assets/shapes-sd/vae)")
    vae = AutoencoderKL.from_pretrained(folder)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if factor != 2 or vae.config.latent_channels != 4:
        raise ValueError(f"--vae-from {folder}: the denoisers take 4-channel latents at 1/2 the image size; this VAE "
                         f"gives {vae.config.latent_channels} channels at 1/{factor}")
    return vae.requires_grad_(False).eval()


def build_pipeline(config: TrainConfig, conditioning: TextConditioning, vae, unet, scheduler):
    """The ``StableDiffusion[XL]Pipeline`` of the trained parts. SDXL's unconditional branch is the encoded empty
    prompt (``force_zeros_for_empty_prompt=False``), which caption dropout trained, not SDXL's zeros."""
    tokenizers, encoders = conditioning.tokenizers, conditioning.text_encoders
    if config.arch == "sdxl":
        return StableDiffusionXLPipeline(vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1],
                                         tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], unet=unet,
                                         scheduler=scheduler, force_zeros_for_empty_prompt=False,
                                         add_watermarker=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=encoders[0], tokenizer=tokenizers[0], unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def render_dataset(config: TrainConfig) -> tuple[torch.Tensor, list[str]]:
    """``[N,3,H,W]`` images in [-1, 1] and their prompts (scene ``i`` is rendered with seed ``i``), the prompts made
    noisy by :func:`noisy_caption` when ``caption_noise`` > 0 (the scenes do not change)."""
    rng = random.Random(config.seed)
    scenes = [sample_scene(rng, mention_probability=config.mention_probability) for _ in range(config.num_images)]
    images = render_batch([s for s, _ in scenes], list(range(config.num_images)), resolution=config.resolution)
    noise_rng = random.Random(config.seed + 40)
    prompts = [noisy_caption(p, config.caption_noise, noise_rng) if config.caption_noise else p for _, p in scenes]
    return images.float() / 127.5 - 1, prompts


def noisy_caption(prompt: str, probability: float, rng: random.Random) -> str:
    """``prompt`` with each attribute it names replaced, with ``probability``, by another value drawn uniformly: the
    model learns to follow its prompts only partly, as web-caption noise teaches real text-to-image models, which
    leaves alignment room in every component of the reward."""
    asked = parse_prompt(prompt)
    named = [a for a in ATTRIBUTES if getattr(asked, a) is not None]
    wrong = {a: rng.choice([v for v in OPTIONS[a] if v != getattr(asked, a)]) for a in named
             if rng.random() < probability}
    return describe(replace(asked, **wrong), named)


def _optimizer(params, lr: float, warmup: int):
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup)))
    return optimizer, schedule


def _step(loss: torch.Tensor, params, optimizer, schedule) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()


def train_vae(vae: AutoencoderKL, images: torch.Tensor, config: TrainConfig, device: torch.device) -> float:
    """MSE reconstruction of a posterior sample + ``kl_weight`` * KL; returns seconds per step."""
    vae.to(device).train()
    params = list(vae.parameters())
    optimizer, schedule = _optimizer(params, config.vae_lr, config.warmup_steps)
    g = torch.Generator().manual_seed(config.seed + 10)
    started = time.perf_counter()
    for step in range(1, config.vae_steps + 1):
        x = images[torch.randint(len(images), (config.vae_batch_size,), generator=g)].to(device)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g).to(device)
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon.float(), x.float())
        loss = mse + config.kl_weight * posterior.kl().float().mean()
        _step(loss, params, optimizer, schedule)
        log_progress("vae", step, config.vae_steps, mse.item(), started)
    vae.eval()
    return (time.perf_counter() - started) / config.vae_steps


@torch.no_grad()
def cache_latents(vae: AutoencoderKL, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (CPU tensors)."""
    means, stds = [], []
    for chunk in images.split(256):
        posterior = vae.encode(chunk.to(device)).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def latent_scaling_factor(mean: torch.Tensor, std: torch.Tensor) -> float:
    """1 / std of a posterior sample over the data (SD's convention for ``vae.config.scaling_factor``)."""
    return 1.0 / torch.sqrt(mean.var() + std.pow(2).mean()).item()


def train_denoiser(unet, conditioning: TextConditioning, scheduler, latents: tuple[torch.Tensor, torch.Tensor],
                   prompts: list[str], scaling_factor: float, config: TrainConfig, device: torch.device) -> float:
    """Joint ε-prediction training of UNet and text encoder(s) with caption dropout; returns seconds per step."""
    noise_scheduler = DDPMScheduler.from_config(scheduler.config)
    tokens = conditioning.token_ids(prompts + [""])
    ids, empty = tokens[:-1], tokens[-1]
    mean, std = latents
    unet.to(device).train()
    conditioning.to(device).train()
    params = list(unet.parameters()) + list(conditioning.parameters())
    optimizer, schedule = _optimizer(params, config.unet_lr, config.warmup_steps)
    g = torch.Generator().manual_seed(config.seed + 20)
    average = [p.detach().clone() for p in params] if config.ema_decay else None
    started = time.perf_counter()
    for step in range(1, config.unet_steps + 1):
        idx = torch.randint(len(ids), (config.unet_batch_size,), generator=g)
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scaling_factor
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(noise_scheduler.config.num_train_timesteps, (len(idx),), generator=g)
        noisy = noise_scheduler.add_noise(z, noise, t)
        drop = torch.rand(len(idx), generator=g) < config.caption_dropout
        batch_ids = torch.where(drop[:, None, None], empty, ids[idx])
        pred = unet(noisy.to(device), t.to(device), **conditioning.unet_kwargs(batch_ids)).sample
        loss = F.mse_loss(pred.float(), noise.to(device).float())
        _step(loss, params, optimizer, schedule)
        if average is not None:  # decay min(ema_decay, (1 + step) / (10 + step)): EMAModel's warm-up, one step ahead
            decay = min(config.ema_decay, (1 + step) / (10 + step))
            for kept, param in zip(average, params):
                kept.lerp_(param.detach(), 1 - decay)
        log_progress("unet+text", step, config.unet_steps, loss.item(), started)
    if average is not None:
        with torch.no_grad():
            for param, kept in zip(params, average):
                param.copy_(kept)
    unet.eval()
    conditioning.eval()
    return (time.perf_counter() - started) / config.unet_steps


def eval_prompts(config: TrainConfig) -> list[str]:
    """Held-out prompts naming size, colour, shape and background (the probe's template), from a separate seed."""
    rng = random.Random(10_000 + config.seed)
    return [describe(sample_scene(rng, mention_probability=1.0)[0], ("size", "colour", "shape", "background"))
            for _ in range(config.eval_prompts)]


@torch.no_grad()
def evaluate(out: Path, config: TrainConfig, device: torch.device) -> dict:
    """Reload the saved pipeline, sample the held-out prompts, score them; writes ``samples.png``."""
    pipe = PIPELINES[config.arch].from_pretrained(out).to(device)
    pipe.set_progress_bar_config(disable=True)
    prompts = eval_prompts(config)
    generator = torch.Generator().manual_seed(config.seed + 30)
    images = torch.cat([
        pipe(chunk, num_inference_steps=config.eval_steps, guidance_scale=config.eval_guidance, generator=generator,
             height=config.resolution, width=config.resolution, output_type="pt").images.float().cpu()
        for chunk in (prompts[i:i + 20] for i in range(0, len(prompts), 20))
    ]).clamp(0, 1)
    result = ShapesScorer().score(images, prompts)
    _save_grid(images, out / "samples.png")
    metrics = {"arch": config.arch, "mean_reward": result.scores.mean().item(), "prompts": len(prompts),
               "guidance_scale": config.eval_guidance, "scheduler": type(pipe.scheduler).__name__,
               "sampling_steps": config.eval_steps,
               "parameters": {name: sum(p.numel() for p in getattr(pipe, name).parameters())
                              for name in ("unet", "text_encoder", "text_encoder_2", "vae") if hasattr(pipe, name)}}
    metrics.update({f"accuracy/{k}": v.mean().item() for k, v in result.details.items()
                    if k in ("colour", "shape", "size", "background", "detected")})
    metrics["chance/colour"], metrics["chance/shape"] = 1 / 6, 1 / len(SHAPES)
    return metrics


def _save_grid(images: torch.Tensor, path: Path, columns: int = 10) -> None:
    from PIL import Image

    n, _, h, w = images.shape
    rows = math.ceil(n / columns)
    grid = torch.ones(3, rows * (h + 2), columns * (w + 2))
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[:, r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = image
    Image.fromarray((grid * 255).round().byte().permute(1, 2, 0).numpy()).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the save_pretrained pipeline")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a ~1 minute smoke run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_config_flags(parser, TrainConfig, QUICK)
    args = parser.parse_args(argv)
    config = config_from_args(parser, args, TrainConfig, QUICK)
    device = torch.device(args.device)
    torch.manual_seed(config.seed)
    timings: dict[str, float] = {}
    began = time.perf_counter()

    conditioning, unet, scheduler = build_denoiser(config)
    vae = build_vae(config)
    images, prompts = render_dataset(config)
    timings["render_s"] = time.perf_counter() - began
    if not config.vae_from:
        timings["vae_s_per_step"] = train_vae(vae, images, config, device)
    t0 = time.perf_counter()
    latents = cache_latents(vae.to(device), images, device)
    if not config.vae_from:
        vae.register_to_config(scaling_factor=latent_scaling_factor(*latents))
    timings["cache_s"] = time.perf_counter() - t0
    timings["unet_s_per_step"] = train_denoiser(unet, conditioning, scheduler, latents, prompts,
                                                vae.config.scaling_factor, config, device)
    build_pipeline(config, conditioning, vae, unet, scheduler).save_pretrained(args.out)
    (args.out / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    t0 = time.perf_counter()
    metrics = evaluate(args.out, config, device)
    timings["eval_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - began
    metrics["timings"] = timings
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
