"""Group: the processes that train one model together, and the few collectives training needs.

    group = Group.single()                        # one process: every collective returns its input
    group = Group.joined(rank, world_size, names)  # after torch.distributed.init_process_group
    totals = group.sum(np.array([rows, sse]))      # float64, the same array on every rank
    levels = group.gather(local_levels)            # one entry per rank, in rank order
    value = group.agree(lambda: summarise(shard))  # a DataError on any rank is raised on every rank

fit() is written once for any world size: with one process each collective is the identity, so a
single-host job runs the same code as a distributed one. The group knows nothing of SageMaker: the
container (container/cluster.py) decides ranks, hosts and the backend and joins the process group; this
module only talks to torch.distributed once it is initialised.

Why `agree`: a DataError on one rank (a bad cell in its shard) would leave the others waiting in their
next collective until the timeout. Every data-dependent phase therefore ends with an exchange of each
rank's outcome, so all ranks fail together, at once, with the same message (naming the process at fault).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from model.errors import DataError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class CollectiveError(RuntimeError):
    """A collective failed: another process ended, the network broke, or the timeout passed. torch raises
    these as plain RuntimeErrors; this one says which operation and which process saw it."""


def _collective(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Group, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as error:
            if isinstance(error, CollectiveError) or not self.distributed:
                raise
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CollectiveError(f"{self.name} lost contact with the other processes during {method.__name__} "
                                  f"({first})") from error
    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class Group:
    rank: int
    world_size: int
    names: tuple[str, ...]          # who each rank is, for messages: "algo-2", "algo-1 process 1"
    device: torch.device            # where collective tensors live (NCCL needs CUDA tensors)

    @classmethod
    def single(cls, device: torch.device | None = None) -> Group:
        return cls(0, 1, ("this process",), device or torch.device("cpu"))

    @classmethod
    def joined(cls, rank: int, world_size: int, names: Sequence[str], device: torch.device) -> Group:
        """The group of an initialised default process group (torch.distributed.init_process_group)."""
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised")
        return cls(rank, world_size, tuple(names), device)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        """Rank 0: the one process that writes the model, metrics, checkpoints and failure file."""
        return self.rank == 0

    @property
    def name(self) -> str:
        return self.names[self.rank]

    @_collective
    def sum(self, values: np.ndarray) -> np.ndarray:
        """The element-wise float64 sum of `values` over all ranks, identical on every rank."""
        array = np.asarray(values, dtype=np.float64)
        if not self.distributed:
            return array.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        dist.all_reduce(tensor)
        return np.asarray(tensor.cpu().numpy(), dtype=np.float64).reshape(array.shape)

    @_collective
    def sum_tensors_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sums tensors (of one dtype and device) in place over all ranks, in one flat collective."""
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for tensor in tensors:
            tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()

    @_collective
    def gather(self, value: T) -> list[T]:
        """Every rank's `value` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out  # type: ignore[return-value]

    @_collective
    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (the others' argument is ignored)."""
        if not self.distributed:
            return value
        box: list[object] = [value if self.leader else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[return-value]

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on at least one."""
        return bool(self.sum(np.array([1.0 if flag else 0.0]))[0] > 0)

    @_collective
    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def agree(self, compute: Callable[[], T], errors: tuple[type[Exception], ...] = (DataError,)) -> T:
        """`compute()` on every rank; if it raised one of `errors` on any rank, every rank raises the first
        one (in rank order, of its type, its message led by the process at fault)."""
        outcome: tuple[type[Exception], str] | None = None
        result: T | None = None
        try:
            result = compute()
        except errors as error:
            if not self.distributed:
                raise
            outcome = (type(error), str(error))
        failures = [(rank, failed) for rank, failed in enumerate(self.gather(outcome)) if failed is not None]
        if failures:
            rank, (kind, message) = failures[0]
            raise kind(f"{self.names[rank]}: {message}") from None
        return result  # type: ignore[return-value]
