"""Where the training loop's micro-batches come from: a finite dataset, or an online source drawing rounds of data
from the policy being trained (sample -> score -> pair).

The loop (``visalign.trainers._loop``) talks to its data source through five calls and nothing else:

- ``batches(start)``: training micro-batches from stream position ``start`` on (the position counts micro-batches
  from step 0: a resume at optimizer step ``s`` starts at ``s · gradient_accumulation_steps``);
- ``epoch_length()``: micro-batches per epoch, or ``None`` when the data has no epochs (the run then needs
  ``max_steps``);
- ``progress()``: figures logged on every metrics line (``epoch``; an online source's round counts);
- ``state_dict()`` / ``load_state_dict(state, folder)``: the source's JSON state, kept in each checkpoint's
  ``trainer_state.json``, and restored with the checkpoint ``folder`` at hand;
- ``save_files(folder)``: data the source keeps inside a checkpoint (called on the main process while the checkpoint
  is still written under its temporary name, so it is as atomic as the rest of the checkpoint).

:class:`DatasetSource` streams a finite, indexable dataset; :class:`OnlineSource` draws its data in rounds from a
:class:`RoundProducer` and streams each round as a :class:`DatasetSource`; :class:`TensorRows` is a round held in
memory as tensors (SPO's step-wise transitions), saved into a checkpoint as safetensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

logger = logging.getLogger(__name__)


def make_dataloader(dataset, batch_size: int, collator: Callable[[list[dict]], dict], *, num_workers: int = 0,
                    generator: torch.Generator | None = None) -> DataLoader:
    """A loader over ``dataset``: shuffled by ``generator`` when one is given, else in order."""
    sampler = RandomSampler(dataset, generator=generator) if generator is not None else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collator, num_workers=num_workers,
                      generator=generator)


class DatasetSource:
    """Micro-batches of a finite, indexable ``dataset``, epoch after epoch (epoch ``e`` shuffled with ``seed + e``).

    A dataset with ``set_epoch(e)`` is told the epoch before it is read, through accelerate's loader too (which
    re-sets it from its own counter), also after a resume mid-epoch, so per-epoch augmentation draws (flips, crops,
    caption dropout) replay exactly. A resume skips to its position with ``accelerator.skip_first_batches``. The
    stream is a function of the position alone, so the source keeps no state.
    """

    def __init__(self, accelerator: Accelerator, dataset, *, batch_size: int,
                 collator: Callable[[list[dict]], dict], seed: int, num_workers: int = 0) -> None:
        self.accelerator = accelerator
        self.dataset = dataset
        self.seed = seed
        self._generator = torch.Generator()
        self.loader = accelerator.prepare(make_dataloader(dataset, batch_size, collator, num_workers=num_workers,
                                                          generator=self._generator))

    def epoch_length(self) -> int:
        return len(self.loader)

    def batches(self, start: int) -> Iterator[dict]:
        """Training micro-batches from stream position ``start`` on, across epochs."""
        epoch, skip = divmod(start, len(self.loader))
        while True:
            self._generator.manual_seed(self.seed + epoch)
            # accelerate's loader calls dataset.set_epoch(loader.iteration) when iterated, and a resumed run's fresh
            # loader (or skip_first_batches' copy of it) starts at iteration 0: the epoch goes to the loader, which
            # passes it on. The dataset is told directly too, as the loader skips that when its sampler is seedable.
            self.loader.set_epoch(epoch)
            if hasattr(self.dataset, "set_epoch"):  # per-epoch augmentation draws (flip, crop, caption dropout)
                self.dataset.set_epoch(epoch)
            loader = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
            yield from loader
            epoch, skip = epoch + 1, 0

    def progress(self, position: int) -> dict[str, float]:
        return {"epoch": position / len(self.loader)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], folder: Path) -> None:
        """Nothing to restore: the stream is a function of the position."""

    def save_files(self, folder: Path) -> None:
        """Nothing to keep: the dataset is the run's input."""

    def close(self) -> None:
        """Let go of the loader (accelerate keeps every prepared loader otherwise): an online source's past round."""
        if self.loader in self.accelerator._dataloaders:
            self.accelerator._dataloaders.remove(self.loader)


@dataclass
class Round:
    """One round of online data: a finite, indexable ``dataset`` (empty when the round yielded nothing) and one line
    saying what was drawn (logged; quoted when the round is empty)."""

    dataset: Any
    description: str


class TensorRows(torch.utils.data.Dataset):
    """Examples held as tensors with a leading example dimension, item ``i`` = ``{name: tensor[i]}`` (e.g. SPO's
    step-wise pairs: parents, chosen and rejected latents, timesteps, prompt indices). ``save`` and ``load`` keep them
    bit for bit in a safetensors file (on the CPU): what an in-memory :class:`RoundProducer` writes in
    ``save_round`` and reads in ``restore_round``."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        sizes = {name: len(value) for name, value in tensors.items()}
        if not tensors or len(set(sizes.values())) != 1:
            raise ValueError(f"TensorRows needs tensors with one leading size; got {sizes}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: value[index] for name, value in self.tensors.items()}

    def save(self, path: Path) -> None:
        save_file({name: value.detach().cpu().contiguous() for name, value in self.tensors.items()}, path)

    @classmethod
    def load(cls, path: Path) -> TensorRows:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from the checkpoint, so the run cannot resume on its round; "
                                    "resume from another checkpoint")
        return cls(load_file(path))


class RoundProducer(Protocol):
    """Draws the rounds of an :class:`OnlineSource` (e.g. on-policy Diffusion-DPO: sample images, score, pair; SPO:
    sample trajectories with log-probs, pair per step).

    ``produce`` must be deterministic given the run's seed, ``round_index`` and the policy's weights, and must return
    the same dataset on every process (the source shards it like any dataset). A producer that keeps each round itself
    (on disk, written under a temporary name and renamed when complete) writes nothing in ``save_round`` and reads
    its copy back in ``restore_round``; one whose rounds live in memory writes them into the checkpoint ``folder``.
    """

    def produce(self, round_index: int, policy: torch.nn.Module) -> Round:
        """Sample from ``policy`` (the current weights), score, form the round's training examples."""

    def save_round(self, round_index: int, data: Round, folder: Path) -> None:
        """Keep ``data`` in the checkpoint ``folder`` if the producer does not keep it elsewhere (main process)."""

    def restore_round(self, round_index: int, folder: Path) -> Round:
        """Round ``round_index`` exactly as ``produce`` returned it, after a resume from checkpoint ``folder``."""


class OnlineSource:
    """Data drawn in rounds from the policy being trained.

    Every ``steps_per_round`` optimizer steps (``0``: one round, drawn before step 1) the source asks ``producer``
    for round ``r`` from the current ``policy`` and streams it as a :class:`DatasetSource` (shuffled with
    ``seed + r``, epoch after epoch) until the next round is due. The current round and the position where it began
    are in the source's state, so a run killed mid-round resumes on the same data (``restore_round``), and one killed
    while drawing redraws the round from the same weights. Drawing is done under a forked RNG, so it takes nothing
    from the random streams training uses.

    A round without any example is said in a warning and counted (``data/empty_rounds``), and the next round is drawn
    at once from the same policy; more than ``max_empty_rounds`` in a row raise, as does an empty single round.
    """

    def __init__(self, accelerator: Accelerator, producer: RoundProducer, policy: torch.nn.Module, *,
                 steps_per_round: int, gradient_accumulation_steps: int, batch_size: int,
                 collator: Callable[[list[dict]], dict], seed: int, num_workers: int = 0,
                 max_empty_rounds: int = 3) -> None:
        if steps_per_round < 0:
            raise ValueError(f"steps_per_round must be >= 0 (0: one round); got {steps_per_round}")
        self.accelerator = accelerator
        self.producer = producer
        self.policy = policy
        self.micro_per_round = steps_per_round * gradient_accumulation_steps  # 0: one round for the whole run
        self.max_empty_rounds = max_empty_rounds
        self._loader_options = {"batch_size": batch_size, "collator": collator, "num_workers": num_workers}
        self.seed = seed
        self.round: Round | None = None
        self.round_index = -1  # the round being streamed
        self.round_start = 0  # the stream position where it began
        self.empty_rounds = 0
        self._stream: DatasetSource | None = None

    # ---------------------------------------------------------------------------------------------- stream

    def epoch_length(self) -> int | None:
        """``None`` with several rounds; with one round, its epoch length (the round is drawn here, before step 1)."""
        if self.micro_per_round:
            return None
        if self._stream is None:
            self._draw(0, start=0)
        return self._stream.epoch_length()

    def batches(self, start: int) -> Iterator[dict]:
        """Micro-batches from stream position ``start`` on, drawing each round when the stream reaches it."""
        position = start
        while True:
            if self._stream is None or (self.micro_per_round and position >= self.round_start + self.micro_per_round):
                self._draw(self.round_index + 1, start=position)
            end = self.round_start + self.micro_per_round if self.micro_per_round else None
            for batch in self._stream.batches(position - self.round_start):
                yield batch
                position += 1
                if position == end:
                    break

    def progress(self, position: int) -> dict[str, float]:
        if not self.micro_per_round:
            return self._stream.progress(position)
        return {"data/round": float(self.round_index), "data/round_examples": float(len(self.round.dataset)),
                "data/empty_rounds": float(self.empty_rounds)}

    def _draw(self, round_index: int, *, start: int) -> None:
        """Draw rounds from ``round_index`` on until one holds an example; it begins at stream position ``start``."""
        empty_in_a_row = 0
        while True:
            with torch.random.fork_rng(devices=_cuda_devices(self.accelerator.device)):
                data = self.producer.produce(round_index, self.policy)
            if len(data.dataset):
                break
            if not self.micro_per_round:
                raise ValueError(f"round 0 yielded no training example ({data.description}): nothing to train on")
            self.empty_rounds += 1
            empty_in_a_row += 1
            if empty_in_a_row > self.max_empty_rounds:
                raise ValueError(f"{empty_in_a_row} rounds in a row (up to round {round_index}) yielded no training "
                                 f"example, more than max_empty_rounds={self.max_empty_rounds}: {data.description}")
            logger.warning("round %d yielded no training example (%s); drawing round %d from the same policy",
                           round_index, data.description, round_index + 1)
            round_index += 1
        logger.info("round %d from stream position %d: %s", round_index, start, data.description)
        self._begin(round_index, start, data)

    def _begin(self, round_index: int, start: int, data: Round) -> None:
        if self._stream is not None:
            self._stream.close()
        self.round, self.round_index, self.round_start = data, round_index, start
        self._stream = DatasetSource(self.accelerator, data.dataset, seed=self.seed + round_index,
                                     **self._loader_options)

    # ---------------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round_index, "round_start": self.round_start, "empty_rounds": self.empty_rounds}

    def load_state_dict(self, state: dict[str, Any], folder: Path) -> None:
        """Restore the round being streamed at the checkpoint (none before step 1: it is drawn when due)."""
        self.empty_rounds = state["empty_rounds"]
        if state["round"] < 0 or (state["round"], state["round_start"]) == (self.round_index, self.round_start):
            return
        self._begin(state["round"], state["round_start"], self.producer.restore_round(state["round"], folder))

    def save_files(self, folder: Path) -> None:
        if self.round is not None:
            self.producer.save_round(self.round_index, self.round, folder)



def _cuda_devices(device: torch.device) -> list[int]:
    """The CUDA device whose RNG a fork must cover too (none off CUDA)."""
    return [device.index or 0] if device.type == "cuda" else []
