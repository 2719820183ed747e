"""Train a step-aware preference model (SPO's SPM) for the shapes world, seeded and reproducible.

    python scripts/train_shapes_spm.py --out /tmp/shapes-spm --threads 2     # 20-34 min on a 2-core CPU
    python scripts/train_shapes_spm.py --out /tmp/shapes-spm --quick          # a smoke run of about a minute

Not shipped: the SPM does not beat the plain ``shapes`` reward on the same noisy predicted x0 (at t = 951 level with
it on held-out seeds 2000 and 3000, 0.60 against 0.64 and 0.62 against 0.59; below it at every smaller t), so
``spo-shapes`` judges steps with the plain reward and there is no ``builtin:shapes-spm``. docs/shapes-spm.md has the
figures, why it does not win, and every setting tried.

SPO (Liang et al., "Aesthetic Post-Training Diffusion Models from Generic Preferences with Step-by-step Preference
Optimization", CVPR 2025, arXiv 2406.04314; reference ``diffusion-methods.md`` §6.3) starts its SPM from PickScore,
a CLIP already fitted to human preferences, and fine-tunes it, with the timestep conditioning, on the predicted x0 of
the frozen diffusion model. The shapes world has no such CLIP, so this script makes the whole chain:

1. **shapes CLIP**: a transformers ``CLIPModel`` whose text tower is ``builtin:shapes-sd``'s trained
   ``text_encoder`` (same word-level tokenizer) and whose vision tower (ViT, 4-px patches on 32-px images) is new,
   trained contrastively (CLIP's symmetric InfoNCE; captions equal to another of the batch share the target) on
   ``clip_images`` scenes rendered by ``visalign.shapes`` with ``sample_scene`` prompts, through the scorers' own
   preprocessing (``reward_models.preprocess.CenterCropTransform``), together with an attribute readout loss
   (``attribute_weight``): one linear head per attribute on the vision tower's pooled output, cross-entropy against
   what the ``shapes`` reward reads from the render (``visalign.shapes.analysis``); the heads are dropped after the
   stage. Without them the CLIP learns colour and background and hardly sees shape or position (docs/shapes-spm.md);
2. **shapes PickScore** (PickScore is CLIP fine-tuned on preference pairs; here the preferences are the ``shapes``
   reward's): the whole CLIP trained with PickScore's loss on fresh pairs every step, each pair two renders of the
   prompt's scene with every attribute redrawn with probability ``near_miss_probability``
   (``visalign.shapes.perturb``), labelled by the ``shapes`` reward on the clean renders (equal scores: a tie);
3. **preference pairs** sampled from ``builtin:shapes-sd`` and labelled by the ``shapes`` reward
   (``visalign.evaluation.pairs.generate_preference_pairs``, the quickstart's sampling: DDIM 10 steps, CFG 3):
   ``train_prompts`` prompts x ``samples_per_prompt`` seeds, every ordered pair whose reward gap exceeds ``min_gap``
   (``pairing: all``), and a held-out set of ``eval_prompts`` other prompts with seeds from ``eval_seed``, one
   best-vs-worst pair per prompt, so no two eval pairs share an image;
4. **the SPM**, trained by the library's own command, ``visalign train --config spm-shapes`` (``visalign.cli.train``)
   with ``--spm_init`` the CLIP of stage 2, ``--dataset`` / ``--eval_dataset`` the pairs of stage 3: per pair one
   ``t ~ U[0, 1000)`` and one shared ``ε``, the frozen shapes-sd's guided predicted x0, PickScore's loss; the
   labels are the ``shapes`` reward's on the clean images. The run's final evaluation reports, on the held-out pairs
   at t = 0, 251, 501, 701, 951, the SPM's accuracy and the plain ``shapes`` scorer's on the same noisy predicted x0
   (``eval_accuracy/t=T`` and ``eval_baseline_accuracy/t=T``).

The SPM's folder (``save_pretrained`` of ``reward_models.step_aware.StepAwareScorer``: the CLIP, its tokenizer and
the step modules, safetensors) is written to ``--out`` with ``train_config.json``, ``metrics.json`` (accuracies per t,
the imitation's accuracy, pair counts, timings) and ``train.log`` beside it; load it with
``load_scorer("step-aware", model=OUT)``. ``--threads 1`` is the default: on a 2-core machine shared with another job,
one torch thread sampled 4.5x faster than two; on an idle machine pass ``--threads 2``. Two runs with the same seed
and thread count train the same CLIP and SPM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPProcessor, CLIPTextModel, CLIPVisionConfig

from _shapes_common import add_config_flags, config_from_args, log_progress
from reward_models import load_scorer
from reward_models.preprocess import CenterCropTransform
from reward_models.step_aware import step_aware_preference_loss
from visalign.evaluation.generate import GenerationSettings, load_pipeline
from visalign.evaluation.pairs import generate_preference_pairs
from visalign.models.builtin import resolve_model
from visalign.shapes import analysis
from visalign.shapes.render import render_batch
from visalign.shapes.world import ATTRIBUTES, OPTIONS, perturb, sample_scene
from visalign.testing.clip import LOGIT_SCALE_INIT, clip_image_processor, seeded

DIFFUSION_MODEL = "builtin:shapes-sd"
RECIPE = "spm-shapes"


@dataclass(frozen=True)
class TrainConfig:
    seed: int = field(default=0, metadata={"help": "seeds the CLIP, its data, the training pairs and the SPM run"})
    resolution: int = field(default=32, metadata={"help": "image side in pixels (shapes-sd's)"})
    # stage 1: the shapes CLIP
    clip_hidden_size: int = field(default=64, metadata={"help": "width of the CLIP vision tower"})
    clip_layers: int = field(default=4, metadata={"help": "vision transformer layers"})
    clip_patch_size: int = field(default=4, metadata={"help": "ViT patch side in pixels"})
    clip_images: int = field(default=20000, metadata={"help": "rendered scenes the CLIP is trained on"})
    clip_steps: int = field(default=1500, metadata={"help": "CLIP optimizer steps"})
    clip_batch_size: int = field(default=128, metadata={"help": "image-caption pairs per contrastive batch"})
    clip_lr: float = field(default=2e-3, metadata={"help": "CLIP AdamW learning rate (linear warm-up, cosine)"})
    mention_probability: float = field(default=0.75, metadata={"help": "P(a caption names size/position/bg)"})
    attribute_weight: float = field(default=1.0, metadata={"help": "weight of the attribute readout loss beside the "
                                                                   "contrastive one (0: contrastive only)"})
    # stage 2: the shapes PickScore (the CLIP fitted to the shapes reward's preferences on clean near-miss renders)
    imitate_steps: int = field(default=1000, metadata={"help": "PickScore-loss steps on near-miss render pairs"})
    imitate_batch_size: int = field(default=64, metadata={"help": "render pairs per imitation step"})
    imitate_lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate of the imitation (constant)"})
    near_miss_probability: float = field(default=0.3, metadata={"help": "P(an attribute of a pair's scene is "
                                                                             "redrawn; visalign.shapes.perturb)"})
    # stage 3: preference pairs from shapes-sd, labelled by the shapes reward
    train_prompts: int = field(default=500, metadata={"help": "training prompts (sample_scene, from seed)"})
    samples_per_prompt: int = field(default=4, metadata={"help": "shapes-sd samples per training prompt"})
    min_gap: float = field(default=0.1, metadata={"help": "shapes-reward gap a pair needs (as the quickstart)"})
    eval_prompts: int = field(default=400, metadata={"help": "held-out prompts, one best-vs-worst pair each"})
    eval_samples_per_prompt: int = field(default=4, metadata={"help": "samples per held-out prompt"})
    eval_seed: int = field(default=2000, metadata={"help": "seeds the held-out prompts and their samples (settings "
                                                             "were chosen on seeds 1000 and 2000: confirm a new one "
                                                             "on another)"})
    sample_steps: int = field(default=10, metadata={"help": "DDIM steps of the sampled images"})
    sample_guidance: float = field(default=3.0, metadata={"help": "CFG scale of the sampled images"})
    # stage 4: the SPM (visalign train --config spm-shapes with these overrides)
    spm_steps: int = field(default=400, metadata={"help": "SPM optimizer steps (max_steps)"})
    spm_batch_size: int = field(default=16, metadata={"help": "pairs per SPM step"})
    spm_lr: float = field(default=1e-4, metadata={"help": "SPM AdamW learning rate"})


QUICK = {"clip_images": 512, "clip_steps": 20, "clip_batch_size": 32, "imitate_steps": 4, "imitate_batch_size": 16,
         "train_prompts": 24, "eval_prompts": 12, "spm_steps": 4, "spm_batch_size": 8}


class Tee:
    """Write to several streams (the console and ``train.log``)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def build_clip(config: TrainConfig) -> tuple[CLIPModel, object]:
    """A ``CLIPModel``: text tower = shapes-sd's trained text encoder (its tokenizer too), new vision tower."""
    folder = Path(resolve_model(DIFFUSION_MODEL))
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    text = text_encoder.config
    width = config.clip_hidden_size
    vision = CLIPVisionConfig(image_size=config.resolution, patch_size=config.clip_patch_size, hidden_size=width,
                              intermediate_size=4 * width, num_hidden_layers=config.clip_layers,
                              num_attention_heads=max(1, width // 16), hidden_act="gelu",
                              projection_dim=text.projection_dim)
    clip_config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                             projection_dim=text.projection_dim, logit_scale_init_value=LOGIT_SCALE_INIT)
    with seeded(config.seed):
        model = CLIPModel(clip_config)
    model.text_model.load_state_dict(text_encoder.state_dict())  # strict: raises on any mismatch
    return model, tokenizer


def render_captioned(config: TrainConfig) -> tuple[torch.Tensor, list[str], dict[str, torch.Tensor]]:
    """``clip_images`` scenes (uint8 ``[N,3,H,W]``, scene ``i`` rendered with seed ``i``), their captions and what the
    shapes reward reads from each (:func:`attribute_targets`)."""
    rng = random.Random(config.seed)
    scenes = [sample_scene(rng, mention_probability=config.mention_probability) for _ in range(config.clip_images)]
    images = render_batch([s for s, _ in scenes], list(range(config.clip_images)), resolution=config.resolution)
    return images, [p for _, p in scenes], attribute_targets(images)


def attribute_targets(images: torch.Tensor, chunk: int = 2048) -> dict[str, torch.Tensor]:
    """Per uint8 image, the option index of each attribute as the ``shapes`` reward reads it
    (:func:`visalign.shapes.analysis.analyse`: a small star read as a circle is a circle here too)."""
    found = [analysis.analyse(part.float() / 255) for part in images.split(chunk)]
    return {a: torch.cat([getattr(f, a) for f in found]) for a in ATTRIBUTES}


def attribute_heads(model: CLIPModel, seed: int) -> torch.nn.ModuleDict:
    """One linear classifier per attribute on the vision tower's pooled output (discarded after stage 1)."""
    with seeded(seed):
        return torch.nn.ModuleDict({a: torch.nn.Linear(model.config.vision_config.hidden_size, len(OPTIONS[a]))
                                    for a in ATTRIBUTES})


def clip_forward(model: CLIPModel, pixels: torch.Tensor, tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """The vision tower's pooled output (what the readout heads see) and the image-to-caption logits, from one
    forward of each tower (transformers' ``CLIPModel`` output keeps only the projected image embedding)."""
    vision = model.vision_model(pixel_values=pixels).pooler_output
    text = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
    image_embeds = F.normalize(model.visual_projection(vision), dim=-1)
    text_embeds = F.normalize(model.text_projection(text), dim=-1)
    return vision, model.logit_scale.exp() * image_embeds @ text_embeds.T


def train_clip(model: CLIPModel, tokenizer, config: TrainConfig) -> tuple[float, torch.nn.ModuleDict | None]:
    """CLIP's symmetric contrastive loss on rendered scenes plus ``attribute_weight`` x the attribute readout loss
    (cross-entropy of :func:`attribute_heads` against :func:`attribute_targets`); returns seconds per step and the
    trained heads (None with ``attribute_weight`` 0)."""
    images, captions, targets = render_captioned(config)
    heads = attribute_heads(model, config.seed + 4)
    transform = CenterCropTransform(config.resolution, "torch")  # the scorers' preprocessing
    parameters = [*model.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.clip_lr, weight_decay=0.1)
    warmup = max(1, config.clip_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + torch.cos(torch.tensor(torch.pi * min(1.0, s / config.clip_steps))).item()))
    g = torch.Generator().manual_seed(config.seed + 1)
    model.train()
    started = time.perf_counter()
    for step in range(1, config.clip_steps + 1):
        idx = torch.randint(len(captions), (config.clip_batch_size,), generator=g)
        batch_captions = [captions[i] for i in idx.tolist()]
        tokens = tokenizer(batch_captions, padding=True, return_tensors="pt")
        vision, logits_per_image = clip_forward(model, transform.batch(images[idx].float() / 255), tokens)
        same = torch.tensor([[a == b for b in batch_captions] for a in batch_captions], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)  # equal captions are all positives
        loss = 0.5 * (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_image.T, target))
        if config.attribute_weight:
            loss = loss + config.attribute_weight * sum(F.cross_entropy(heads[a](vision), targets[a][idx])
                                                        for a in ATTRIBUTES)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, LOGIT_SCALE_INIT)
        log_progress("clip", step, config.clip_steps, loss.item(), started)
    model.eval()
    return (time.perf_counter() - started) / config.clip_steps, heads.eval() if config.attribute_weight else None


@torch.no_grad()
def clip_held_out(model: CLIPModel, heads: torch.nn.ModuleDict | None, tokenizer, config: TrainConfig, n: int = 256
                  ) -> dict[str, float]:
    """Held-out check of stage 1 on ``n`` new scenes: ``caption_retrieval``, the fraction whose own caption is the
    most similar among the ``n`` captions (a caption equal to the right one counts as right), and, with ``heads``,
    per attribute the accuracy of its readout head against the shapes reward's reading."""
    rng = random.Random(config.seed + 777)
    scenes = [sample_scene(rng, mention_probability=config.mention_probability) for _ in range(n)]
    images = render_batch([s for s, _ in scenes], [10**6 + i for i in range(n)], resolution=config.resolution)
    captions = [p for _, p in scenes]
    tokens = tokenizer(captions, padding=True, return_tensors="pt")
    pixels = CenterCropTransform(config.resolution, "torch").batch(images.float() / 255)
    pooled, logits = clip_forward(model, pixels, tokens)
    best = logits.argmax(1).tolist()
    check = {"caption_retrieval": sum(captions[b] == captions[i] for i, b in enumerate(best)) / n}
    if heads is not None:
        targets = attribute_targets(images)
        check.update({f"{a}_readout": (heads[a](pooled).argmax(1) == targets[a]).float().mean().item()
                      for a in ATTRIBUTES})
    return check


def near_miss_pairs(rng: random.Random, n: int, scorer, config: TrainConfig
                    ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``n`` pairs of near-miss renders: per ``sample_scene`` prompt, two scenes each :func:`perturb`-ed from the
    prompt's scene and rendered with their own seed. Returns the uint8 images ``[n, 2, 3, H, W]``, the prompts and
    ``label_0`` (1 / 0 / 0.5 when the shapes reward prefers image 0 / image 1 / neither)."""
    scenes = [sample_scene(rng, mention_probability=config.mention_probability) for _ in range(n)]
    specs = [perturb(spec, rng, config.near_miss_probability) for spec, _ in scenes for _ in range(2)]
    images = render_batch(specs, [rng.randrange(2**31) for _ in specs], resolution=config.resolution)
    prompts = [p for _, p in scenes]
    scores = torch.as_tensor(scorer.score(list(images.float() / 255), [p for p in prompts for _ in range(2)]
                                          ).scores).view(n, 2)
    label_0 = ((scores[:, 0] - scores[:, 1]).sign() + 1) / 2
    return images.view(n, 2, *images.shape[1:]), prompts, label_0


def pair_scores(clip, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLIP's scores of both images of each pair (``images`` uint8 ``[n, 2, 3, H, W]``) against its prompt."""
    s0, s1 = (clip.score_tensor(images[:, i].float() / 255, prompts).scores for i in (0, 1))
    return s0, s1


@torch.no_grad()
def imitation_accuracy(clip, pairs) -> float:
    """The fraction of the non-tie ``pairs`` (:func:`near_miss_pairs` outputs) the CLIP ranks as the reward does."""
    scores = [pair_scores(clip, images, prompts) for images, prompts, _ in pairs]
    s0, s1 = (torch.cat([s[i] for s in scores]) for i in (0, 1))
    return step_aware_preference_loss(s0, s1, torch.cat([label_0 for *_, label_0 in pairs]))[1].item()


def imitate_reward(clip_dir: Path, out: Path, scorer, config: TrainConfig) -> dict[str, float]:
    """The shapes world's PickScore: the stage-1 CLIP fine-tuned (all of it) with PickScore's loss
    (:func:`~reward_models.step_aware.step_aware_preference_loss`, ties 0.5/0.5) on fresh near-miss render pairs
    every step, labelled by the shapes reward; saved to ``out``. Returns the held-out accuracy (512 pairs of other
    scenes) before and after, and the seconds per step."""
    clip = load_scorer("pickscore", model=str(clip_dir), resize="torch")  # the scorers' own tensor preprocessing
    net = clip.backbone.net
    held_out_rng = random.Random(config.seed + 2)
    held_out = [near_miss_pairs(held_out_rng, 256, scorer, config) for _ in range(2)]
    before = imitation_accuracy(clip, held_out)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.imitate_lr, weight_decay=0.3)
    rng = random.Random(config.seed + 3)
    net.requires_grad_(True).train()
    started = time.perf_counter()
    for step in range(1, config.imitate_steps + 1):
        images, prompts, label_0 = near_miss_pairs(rng, config.imitate_batch_size, scorer, config)
        loss, _ = step_aware_preference_loss(*pair_scores(clip, images, prompts), label_0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            net.logit_scale.clamp_(0, LOGIT_SCALE_INIT)
        log_progress("imitate", step, config.imitate_steps, loss.item(), started)
    seconds = (time.perf_counter() - started) / max(1, config.imitate_steps)
    net.eval().requires_grad_(False)
    after = imitation_accuracy(clip, held_out)
    net.save_pretrained(out)
    CLIPProcessor(image_processor=clip_image_processor(config.resolution), tokenizer=clip.backbone.tokenizer
                  ).save_pretrained(out)
    return {"held_out_accuracy_before": before, "held_out_accuracy_after": after, "s_per_step": seconds}


def sample_pairs(pipeline, scorer, out: Path, *, prompts: int, samples: int, seed: int, pairing: str,
                 config: TrainConfig) -> dict:
    """``prompts`` ``sample_scene`` prompts (from ``seed``) x ``samples`` shapes-sd images, paired by the shapes
    reward into ``out`` (the library's pair folder)."""
    rng = random.Random(seed)
    texts = [sample_scene(rng, mention_probability=config.mention_probability)[1] for _ in range(prompts)]
    settings = GenerationSettings(num_inference_steps=config.sample_steps, guidance_scale=config.sample_guidance,
                                  height=config.resolution, width=config.resolution)
    return generate_preference_pairs(DIFFUSION_MODEL, texts, scorer, out, pipeline=pipeline,
                                     samples_per_prompt=samples, min_gap=config.min_gap, pairing=pairing,
                                     seed=seed, settings=settings, batch_size=64, progress=False)


_RESULT_LINE = re.compile(r"^((?:eval|train)_\S+|nonfinite_steps|skipped_pairs): (\S+)$")


def train_spm(config: TrainConfig, clip_dir: Path, train_pairs: Path, eval_pairs: Path, run_dir: Path,
              log_file: Path) -> dict[str, float]:
    """``visalign train --config spm-shapes`` with this script's overrides; returns the results it prints."""
    from visalign.cli.train import main as visalign_train

    argv = ["--config", RECIPE, "--model", DIFFUSION_MODEL, "--spm_init", str(clip_dir),
            "--dataset", str(train_pairs), "--eval_dataset", str(eval_pairs), "--output_dir", str(run_dir),
            "--seed", str(config.seed), "--max_steps", str(config.spm_steps),
            "--per_device_batch_size", str(config.spm_batch_size), "--learning_rate", str(config.spm_lr),
            "--resolution", str(config.resolution), "--logging_steps", str(max(1, config.spm_steps // 20))]
    print("visalign train " + " ".join(argv), flush=True)
    before = log_file.stat().st_size if log_file.exists() else 0
    code = visalign_train(argv)
    if code != 0:
        raise RuntimeError(f"visalign train --config {RECIPE} failed with exit code {code} (see {log_file})")
    sys.stdout.flush()
    printed = log_file.read_text(encoding="utf-8")[before:].splitlines()
    return {m[1]: float(m[2]) for m in map(_RESULT_LINE.match, printed) if m}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the trained SPM")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: <out>.work, removed)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder (CLIP, pairs, run)")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (on a 2-core machine shared "
                        "with another job, 1 thread sampled 4.5x faster than 2)")
    add_config_flags(parser, TrainConfig, QUICK)
    args = parser.parse_args(argv)
    config = config_from_args(parser, args, TrainConfig, QUICK)
    torch.set_num_threads(args.threads)
    work = args.work or args.out.with_name(args.out.name + ".work")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    log_file = work / "train.log"
    began = time.perf_counter()
    timings: dict[str, float] = {}
    with open(log_file, "w", encoding="utf-8") as log, contextlib.redirect_stdout(Tee(sys.__stdout__, log)), \
            contextlib.redirect_stderr(Tee(sys.__stderr__, log)):
        print(f"train_shapes_spm: {json.dumps(asdict(config))}", flush=True)
        # 1. the shapes CLIP
        model, tokenizer = build_clip(config)
        timings["clip_s_per_step"], heads = train_clip(model, tokenizer, config)
        clip_check = clip_held_out(model, heads, tokenizer, config)
        print("[clip] held-out renders: " + ", ".join(f"{k} {v:.3f}" for k, v in clip_check.items()), flush=True)
        clip_dir = work / "shapes-clip"
        model.save_pretrained(clip_dir)
        CLIPProcessor(image_processor=clip_image_processor(config.resolution), tokenizer=tokenizer
                      ).save_pretrained(clip_dir)
        timings["clip_total_s"] = time.perf_counter() - began
        # 2. the shapes PickScore: the CLIP fitted to the shapes reward's preferences on clean near-miss renders
        t0 = time.perf_counter()
        scorer = load_scorer("shapes")
        imitation = imitate_reward(clip_dir, work / "shapes-pickscore", scorer, config)
        print(f"[imitate] held-out near-miss render pairs ranked as the shapes reward does: "
              f"{imitation['held_out_accuracy_before']:.3f} -> {imitation['held_out_accuracy_after']:.3f}", flush=True)
        timings["imitate_s"] = time.perf_counter() - t0
        # 3. pairs from shapes-sd, labelled by the shapes reward
        t0 = time.perf_counter()
        pipeline = load_pipeline(DIFFUSION_MODEL, dtype="auto")  # as the quickstart: bf16 where the CPU has it natively
        train_summary = sample_pairs(pipeline, scorer, work / "pairs-train", prompts=config.train_prompts,
                                     samples=config.samples_per_prompt, seed=config.seed, pairing="all",
                                     config=config)
        eval_summary = sample_pairs(pipeline, scorer, work / "pairs-eval", prompts=config.eval_prompts,
                                    samples=config.eval_samples_per_prompt, seed=config.eval_seed,
                                    pairing="best_worst", config=config)
        del pipeline
        timings["pairs_s"] = time.perf_counter() - t0
        print(f"[pairs] train {train_summary['pairs']} pairs from {config.train_prompts} prompts; held-out "
              f"{eval_summary['pairs']} pairs from {config.eval_prompts} prompts (seed {config.eval_seed})", flush=True)
        # 4. the SPM, by `visalign train --config spm-shapes`
        t0 = time.perf_counter()
        result = train_spm(config, work / "shapes-pickscore", work / "pairs-train", work / "pairs-eval",
                           work / "spm", log_file)
        timings["spm_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - began
    spm_steps = ("0", "251", "501", "701", "951")
    metrics = {
        "held_out": {"pairs": eval_summary["pairs"], "prompts": config.eval_prompts, "eval_seed": config.eval_seed,
                     "note": "the shapes reward's best vs worst of eval_samples_per_prompt shapes-sd samples per "
                             "prompt; accuracy over the pairs it does not tie on the training-resolution images"},
        "accuracy": {f"t={t}": {"spm": result.get(f"eval_accuracy/t={t}"),
                                "shapes_baseline": result.get(f"eval_baseline_accuracy/t={t}")} for t in spm_steps},
        "eval_loss": {f"t={t}": result.get(f"eval_loss/t={t}") for t in spm_steps},
        "train_pairs": train_summary["pairs"], "train_loss": result.get("train_loss"),
        "clip_held_out": clip_check, "imitation": imitation, "timings": timings,
    }
    run_dir = work / "spm"
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    for path in run_dir.iterdir():  # the SPM's save_pretrained files (the CLI run's checkpoints dir is left out)
        if path.is_file() and path.suffix in (".json", ".safetensors", ".yaml", ".md", ".txt"):
            shutil.copy2(path, args.out / path.name)
    (args.out / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    lines = log_file.read_text(encoding="utf-8").splitlines()  # progress bars: only their last state
    (args.out / "train.log").write_text("".join(line.split("\r")[-1] + "\n" for line in lines), encoding="utf-8")
    if not args.keep_work:
        shutil.rmtree(work)
    print(json.dumps(metrics["accuracy"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
