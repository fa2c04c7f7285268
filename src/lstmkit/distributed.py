"""Data-parallel training over several processes or GPUs, on PyTorch's own engine.

    torchrun --standalone --nproc_per_node 2 -m lstmkit train --preset small ...

torchrun starts one process per rank and tells each who it is (RANK, WORLD_SIZE, LOCAL_RANK)
and where to meet (MASTER_ADDR, MASTER_PORT). A process that torchrun did not start, or started
alone, is a world of one: every method here is then the identity, torch.distributed is never
initialised, and training takes the single-process path unchanged. With W > 1 replicas:

- every replica builds the same parameters from the seed (DDP also broadcasts rank 0's);
- rank r takes the rows [r*B/W, (r+1)*B/W) of every global batch of B rows, so for the language
  model each rank carries the recurrent state of its own rows from window to window;
- DistributedDataParallel averages the gradients over the replicas during backward; the
  trainers scale each replica's loss so that this average is the gradient of the whole batch,
  hence clipping and the optimizer step see the single-process gradient on every rank;
- every value that decides something (a loss that may be inf, a validation score) is
  all-reduced or broadcast, so all ranks take the same decisions at the same step;
- only rank 0 writes logs, metrics and checkpoints.

Gradients and losses travel over gloo on the CPU and NCCL on CUDA (one GPU per process,
cuda:LOCAL_RANK). A rank that waits longer than LSTMKIT_DIST_TIMEOUT seconds (default 300) for
the others fails instead of hanging; a rank that dies makes torchrun stop the rest at once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta

import torch

from lstmkit.errors import UserError
from lstmkit.reporting import Console

TIMEOUT_ENV = "LSTMKIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 300.0
_RNG_PREFIX = "rng.rank."  # checkpoint tensors rng.rank.{r}.torch / .cuda: each rank's RNG


@dataclass(frozen=True)
class World:
    """This process among the data-parallel replicas (rank 0 of 1 when not launched)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank on this machine: which GPU it uses
    device: torch.device | None = None  # set by `joined`; collectives run on it

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one replica that talks and writes."""
        return self.rank == 0

    @property
    def label(self) -> str:
        """'(rank 1/4) ' to tell the ranks' messages apart; empty in a world of one."""
        return f"(rank {self.rank}/{self.size}) " if self.distributed else ""

    def share(self, count: int) -> slice:
        """This rank's contiguous share of `count` batch rows (first ranks get one more if W
        does not divide `count`): [r*B/W, (r+1)*B/W) when it does."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def check_divides(self, batch_size: int, what: str = "batch_size") -> None:
        if batch_size % self.size:
            raise UserError(f"{what} {batch_size} cannot be split evenly over {self.size} "
                            f"processes; use a multiple of {self.size} (each process takes "
                            f"{what} / {self.size} rows of every batch)")

    def seed_replica(self, seed: int) -> None:
        """After the (identical) parameters are built: a different dropout stream per rank.

        Rank 0 continues the single-process stream; rank r > 0 restarts from seed + r.
        """
        if self.rank > 0:
            torch.manual_seed(seed + self.rank)

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel around `module` (which broadcasts rank 0's parameters and
        averages gradients during backward); `module` itself in a world of one."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def summed(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over the ranks (the same on every rank); `tensor` if alone."""
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        total = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(total)
        return total

    def agree(self, values: Sequence[float]) -> list[float]:
        """Rank 0's `values` on every rank, so a decision taken on them is the same everywhere."""
        if not self.distributed:
            return list(values)
        import torch.distributed as dist

        shared = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.broadcast(shared, src=0)
        return shared.tolist()

    def gather_rows(self, parts: tuple[torch.Tensor, ...], dim: int = 1
                    ) -> tuple[torch.Tensor, ...]:
        """Concatenate every rank's rows (its share of dim `dim`) in rank order: the
        single-process tensor, e.g. carried state [layers, B/W, H] -> [layers, B, H]."""
        if not self.distributed:
            return parts
        return tuple(torch.cat(self._all_gather(part), dim) for part in parts)

    def rng_states(self) -> dict[str, torch.Tensor]:
        """Every rank's RNG state (CPU, and its GPU's), for rank 0 to save with a checkpoint."""
        if not self.distributed:
            return {}
        mine = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        states = {}
        for kind, state in mine.items():
            for rank, gathered in enumerate(self._all_gather(state.to(self.device))):
                states[f"{_RNG_PREFIX}{rank}.{kind}"] = gathered.cpu()
        return states

    def restore_rng(self, tensors: dict[str, torch.Tensor]) -> bool:
        """Restore this rank's saved RNG state if the checkpoint has one from a world of the
        same size (then a resumed run draws the same dropout masks); False if it has not."""
        saved_size = sum(1 for k in tensors if k.startswith(_RNG_PREFIX) and k.endswith(".torch"))
        if saved_size != self.size or not self.distributed:
            return False
        torch.set_rng_state(tensors[f"{_RNG_PREFIX}{self.rank}.torch"])
        cuda = tensors.get(f"{_RNG_PREFIX}{self.rank}.cuda")
        if cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda, self.device)
        return True

    def _all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        import torch.distributed as dist

        tensor = tensor.contiguous()
        pieces = [torch.empty_like(tensor) for _ in range(self.size)]
        dist.all_gather(pieces, tensor)
        return pieces


def launched_world() -> World:
    """Who torchrun says this process is; a world of one if torchrun did not start it."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets "
                        "them)") from None
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"RANK {rank} is not within WORLD_SIZE {size}")
    return World(rank, size, local_rank)


@contextmanager
def joined(world: World, device: torch.device) -> Iterator[World]:
    """Join the other ranks (init the process group) for the duration of the block.

    Yields `world` with its device: `device` itself, except that CUDA means this rank's own GPU
    (cuda:LOCAL_RANK). A process group that the caller already initialised is used and left
    alone; one made here is destroyed on the way out, even after an error.
    """
    if not world.distributed:
        yield dataclasses.replace(world, device=device)
        return
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_seconds()))
    try:
        yield dataclasses.replace(world, device=device)
        if owner:
            # A gloo rank tearing its group down while another still works (rank 0 testing and
            # saving) could abort in gloo's teardown ("terminate called without an active
            # exception", about 1 launch in 10 on two loaded cores): leave together. A peer
            # that failed is gone already, and there is no one to wait for.
            with suppress(RuntimeError):
                dist.barrier()
    finally:
        if owner:
            dist.destroy_process_group()


def timeout_seconds() -> float:
    """How long a rank waits for the others in any one collective before failing."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UserError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return seconds


def rank_console(console: Console | None, world: World | None = None) -> Console:
    """The console this rank talks on: `console` (or a new one) on rank 0, a silent one on the
    other ranks, so a data-parallel run prints each line once."""
    if not (world or launched_world()).is_main:
        return Console(enabled=False)
    return console or Console()


def rank_label() -> str:
    """`World.label` of this process as torchrun launched it (never raises: used in errors)."""
    try:
        return launched_world().label
    except UserError:
        return ""


def lost_contact(err: BaseException) -> str | None:
    """A one-line explanation if `err` is a rank losing the others (a peer died, hung past the
    timeout, or the network failed); None for any other error, or outside torchrun."""
    if not rank_label() or not isinstance(err, RuntimeError):
        return None
    import torch.distributed as dist

    text = str(err)
    markers = ("gloo", "NCCL", "Connection reset", "Connection closed", "Timed out", "timed out")
    if not isinstance(err, dist.DistError) and not any(m in text for m in markers):
        return None
    reason = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    if reason.startswith("[") and "] " in reason:  # drop gloo's "[source/file.cc:537] "
        reason = reason.split("] ", 1)[1]
    reason = reason.split(". ", 1)[0].rstrip(".")
    return (f"{rank_label()}lost contact with the other processes ({reason}); checkpoints "
            f"written so far are intact: relaunch the same command with --resume")
