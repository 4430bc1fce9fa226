"""Several processes on one training run: torchrun's environment and the process group.

`torchrun --nproc_per_node N -m organseg train DATASET RUN_DIR ...` starts N processes;
each finds its place in `RANK`, `WORLD_SIZE` and `LOCAL_RANK` (`World.from_environment`).
Without them (or with WORLD_SIZE 1) a command runs alone, exactly as always, and no
process group is made. Under N processes (organseg.runs, organseg.train):

- Rank 0 alone decides and writes: it validates the dataset, resolves the settings, splits
  the cases and writes config.json, splits.json, labels.json, the checkpoints, log.jsonl
  and curve.png; the other processes take its answer, or raise its error (`on_main`), so
  a refused request ends every process with the same message instead of a hang.
- The case cache is prepared in shares (in case-id order, case i by process i mod N),
  then all processes wait at a barrier and read every case. RUN_DIR (and so the cache)
  must lie on a filesystem that every process sees: one node, or one shared by the nodes.
- Every process builds the same initial weights (the same seed; DistributedDataParallel
  also broadcasts rank 0's) and draws its own samples from its own random stream (rank 0's
  is the single-process stream), so a step sees batch_size x N different samples: the
  effective batch is N times the configured one. Gradients are averaged over all of them
  at every step, so the replicas stay identical; this is checked bit for bit at the end of
  each stage (`assert_replicas_agree`).
- The learning rate stays as configured. The linear scaling rule (lr x N) is tuned for
  SGD and needs a warm-up that organseg does not have; AdamW's step size hardly depends on
  the gradient's scale, and a less noisy gradient at the same rate is the safe side. Raise
  it with `--set stage2.learning_rate=...` if a larger batch should take larger steps.
- An epoch of `iterations_per_epoch` 0 stays one pass over the training cases: each
  process takes ceil(cases / (batch_size x N)) steps; a fixed `iterations_per_epoch` means
  that many steps of batch_size x N samples.
- The logged loss is the mean over the processes; rank 0 alone validates and keeps best.pt.
- Resume: every process loads last.pt, which holds every process's random state, so a
  resumed run continues exactly where it stopped. With another process count, ranks
  without a saved state start fresh streams.

Backends: gloo on CPU, nccl on CUDA, where each process takes the GPU of its LOCAL_RANK.
Each process computes with an even share of the machine's cores (cores.threads_per_process).
A process that fails ends with its error; torchrun then stops the others.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from organseg.cores import threads_per_process
from organseg.errors import InputError

T = TypeVar("T")

# How long a process waits for the others at a collective: rank 0 validating and preparing
# a large dataset at clinical resolution keeps the others waiting, so minutes are not enough.
TIMEOUT = timedelta(hours=2)
_ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one job (one process alone by default)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the rank among the processes of this machine: which GPU

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> World:
        """The world torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK; one process without them."""
        environ = os.environ if environ is None else environ
        if "WORLD_SIZE" not in environ:
            return cls()
        values = [_read_int(environ, name) for name in _ENVIRONMENT]
        rank, world_size, local_rank = values
        if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
            raise InputError(
                f"RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}: not a valid process layout; "
                "launch with torchrun, which sets them"
            )
        return cls(rank, world_size, local_rank)

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that decides and writes."""
        return self.rank == 0

    def device(self, name: str = "auto") -> str:
        """The device name this process uses for `--device name`: with several processes, each its own GPU."""
        if not self.is_distributed or name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
            return name
        if name not in ("auto", "cuda"):
            raise InputError(
                f"--device {name}: under torchrun every process takes the GPU of its LOCAL_RANK; use --device cuda"
            )
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if self.local_rank >= available:
            raise InputError(
                f"LOCAL_RANK {self.local_rank}: this machine has {available} GPU(s); "
                "start at most that many processes per node (--nproc_per_node)"
            )
        return f"cuda:{self.local_rank}"

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.is_distributed:
            dist.barrier(device_ids=[torch.cuda.current_device()] if _on_cuda() else None)

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every process (any picklable value)."""
        if not self.is_distributed:
            return value
        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def gather(self, value: T) -> list[T]:
        """Every process's `value`, by rank, on every process."""
        if not self.is_distributed:
            return [value]
        values: list = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def mean(self, value: float) -> float:
        """The mean of `value` over the processes."""
        if not self.is_distributed:
            return value
        total = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(total)
        return float(total.item()) / self.world_size

    def agree(self, value: int) -> int:
        """The largest `value` over the processes, exchanged on the CPU: it waits for no GPU work."""
        if not self.is_distributed:
            return value
        largest = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=_CONTROL_GROUPS.get("cpu"))
        return int(largest.item())

    def on_main(self, function: Callable[..., T], *args, **kwargs) -> T:
        """`function(*args, **kwargs)` run by rank 0 alone; every process returns its result or raises its error."""
        if not self.is_distributed:
            return function(*args, **kwargs)
        if not self.is_main:
            answer = self.broadcast(None)
            if isinstance(answer, _Failure):
                raise InputError(answer.message) if answer.input_error else RuntimeError(answer.message)
            return answer
        try:
            result = function(*args, **kwargs)
        except InputError as error:
            self.broadcast(_Failure(str(error), input_error=True))
            raise
        except Exception as error:
            self.broadcast(_Failure(f"rank 0 failed: {type(error).__name__}: {error}", input_error=False))
            raise
        return self.broadcast(result)

    def assert_replicas_agree(self, module: torch.nn.Module) -> None:
        """Raise on every process unless each holds bit for bit rank 0's parameters and buffers."""
        if not self.is_distributed:
            return
        differing = []
        for name, tensor in module.state_dict().items():
            reference = tensor.detach().clone()
            dist.broadcast(reference, src=0)
            if not torch.equal(reference, tensor):
                differing.append(name)
        count = torch.tensor([1 if differing else 0], device=_collective_device())
        dist.all_reduce(count)
        if count.item():
            where = f"here (rank {self.rank}): {', '.join(differing[:3])}" if differing else "on other ranks"
            raise RuntimeError(
                f"the model replicas of {int(count.item())} process(es) differ from rank 0's; differing {where}"
            )


ALONE = World()  # one process: the default everywhere a World is taken
# The gloo group of the running process group, for World.agree, when the default group is nccl.
_CONTROL_GROUPS: dict[str, dist.ProcessGroup] = {}


@dataclass(frozen=True)
class _Failure:
    """What rank 0 tells the others when `on_main`'s function raised."""

    message: str
    input_error: bool


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """The process group of `world` for the block: gloo on CPU, nccl on CUDA; nothing for one process."""
    if not world.is_distributed:
        yield
        return
    torch.set_num_threads(threads_per_process())
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before nccl starts, so it binds this process's GPU
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.world_size, timeout=TIMEOUT)
    if backend != "gloo":  # small host-side agreements (World.agree) must not queue behind GPU work
        _CONTROL_GROUPS["cpu"] = dist.new_group(backend="gloo")
    try:
        yield
        dist.barrier()  # no process tears its connections down while another still uses them
    finally:
        _CONTROL_GROUPS.clear()
        # DistributedDataParallel wrappers live in reference cycles: collected at interpreter
        # exit, after the group is gone, their destructors can abort the process (gloo's threads).
        gc.collect()
        dist.destroy_process_group()


def _read_int(environ: Mapping[str, str], name: str) -> int:
    text = environ.get(name)
    if text is None:
        raise InputError(
            f"{name} is not set but WORLD_SIZE is; launch with torchrun, which sets {', '.join(_ENVIRONMENT)}"
        )
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{name}={text!r}: not a whole number; launch with torchrun, which sets it") from None


def _on_cuda() -> bool:
    return dist.get_backend() == "nccl"


def _collective_device() -> torch.device:
    """Where tensors for collectives live: nccl moves GPU tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if _on_cuda() else torch.device("cpu")
