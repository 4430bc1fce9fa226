"""Shards: the cases of one batch split over independent workers, each case to exactly one.

`organseg pseudo-label ... --shard I/N` and `organseg predict ... --shard I/N` do shard I
(0 <= I < N) of N: the cases whose position in case-id order is I modulo N. Every worker
computes the same split from the same folder, with no exchange between them, so they may
run on several machines or as SLURM array tasks, sharing only the output folder. Under
torchrun the shard is the process's own: RANK of WORLD_SIZE.

The split depends on the case list alone, never on which cases are done, so a worker
killed and rerun (or the same batch rerun unsharded) takes up exactly the cases left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from organseg.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (the whole batch by default)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise InputError(f"--shard {self}: give I/N with N >= 1 and 0 <= I < N, e.g. --shard 0/4")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'I/N' as a Shard; an InputError naming the option otherwise."""
        index, separator, count = text.partition("/")
        try:
            if not separator:
                raise ValueError
            index_value, count_value = int(index), int(count)
        except ValueError:
            raise InputError(f"--shard {text}: write it as I/N, e.g. --shard 0/4 (shard 0 of 4)") from None
        return cls(index_value, count_value)  # range checked by __post_init__

    @property
    def is_whole(self) -> bool:
        return self.count == 1

    @property
    def tag(self) -> str:
        """For file names: 'shard-I-of-N'."""
        return f"shard-{self.index}-of-{self.count}"

    def select(self, items: Sequence[T], key: Callable[[T], str]) -> list[T]:
        """This shard's items: position I modulo N in `key` order (all of them, in their order, when whole)."""
        if self.is_whole:
            return list(items)
        ordered = sorted(items, key=key)
        return [item for position, item in enumerate(ordered) if position % self.count == self.index]


WHOLE = Shard()  # every case: the default everywhere a Shard is taken


def worker_shard(option: str | None, rank: int = 0, world_size: int = 1) -> Shard:
    """The shard of this worker: `--shard I/N`, else its torchrun rank of world size (else the whole batch)."""
    if option is not None and world_size > 1:
        raise InputError(f"--shard {option}: torchrun already splits the cases by rank; use one or the other")
    if option is not None:
        return Shard.parse(option)
    return Shard(rank, world_size)
