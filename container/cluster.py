"""The hosts and processes of a training job (resourceconfig.json), and joining them on torch.distributed.

    cluster = Cluster.plan(resources, os.environ, gpus=torch.cuda.device_count())
    with cluster.joined(local_rank) as group:      # model.distributed.Group; Group.single() for one process
        fit(..., group=group)

The world is the sorted `hosts` times the processes per host: one per visible GPU, else one
(HYPERPLANE_PROCESSES_PER_HOST overrides it, e.g. to run several CPU processes on one machine). Rank =
host index * processes per host + local rank, so rank 0 is the first process on the first host: the
master, which SageMaker's own toolkits also put on the first sorted host.
- Master address and port: the first host, port 7777 (MASTER_PORT: the port AWS's PyTorch containers use;
  HYPERPLANE_MASTER_PORT overrides). One host: 127.0.0.1.
- Network interface: resourceconfig's `network_interface_name` when this machine has it, else the first
  interface that is up and not loopback (SDK v3 local mode writes `ethwe`, which its containers lack); it is
  exported as GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME unless those are set. One host: loopback.
- Backend: NCCL when the process has a GPU, else gloo.
- Rendezvous: rank 0 opens a TCPStore on the master port; every process first reaches it (name resolution
  and TCP connect, retried) and registers; rank 0 waits until all have. A process that cannot reach the
  master, or a master some process never reaches, fails within HYPERPLANE_RENDEZVOUS_TIMEOUT_S (default
  300 s: SageMaker starts a job's hosts within seconds of each other, and a host's DNS name can take a while)
  with a ClusterError that names the missing hosts. Collectives time out after
  HYPERPLANE_COLLECTIVE_TIMEOUT_S (default 1800 s).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed import PrefixStore, TCPStore  # type: ignore[attr-defined]

from container.errors import JobError
from model.distributed import Group

log = logging.getLogger("hyperplane.cluster")

MASTER_PORT = 7777
RENDEZVOUS_TIMEOUT_S = 300.0
COLLECTIVE_TIMEOUT_S = 1800.0
_NET = pathlib.Path("/sys/class/net")
N = TypeVar("N", int, float)


class ClusterError(JobError):
    """The processes of the job could not all join: a host unreachable, or one that never arrived."""


@dataclass(frozen=True)
class Cluster:
    hosts: tuple[str, ...]            # sorted
    current_host: str
    processes_per_host: int
    gpus: int                         # visible on this host
    master_port: int
    interface: str | None             # the one gloo and NCCL use; None: let them choose (one host)
    rendezvous_timeout_s: float
    collective_timeout_s: float

    @classmethod
    def plan(cls, resources: Mapping[str, Any], environ: Mapping[str, str], gpus: int,
             net: pathlib.Path = _NET) -> Cluster:
        hosts = tuple(sorted(resources.get("hosts") or ["algo-1"]))
        current = str(resources.get("current_host") or hosts[0])
        if current not in hosts:
            raise ClusterError(f"resourceconfig.json: current_host {current!r} is not among the hosts "
                               f"{', '.join(hosts)}")
        processes = _positive_int(environ, "HYPERPLANE_PROCESSES_PER_HOST", max(gpus, 1))
        # one host: its processes talk over loopback, whatever the machine's own name resolves to
        interface = _interface(str(resources.get("network_interface_name") or ""), net) if len(hosts) > 1 else (
            "lo" if processes > 1 else None)
        return cls(hosts, current, processes, gpus, _positive_int(environ, "HYPERPLANE_MASTER_PORT", MASTER_PORT),
                   interface, _seconds(environ, "HYPERPLANE_RENDEZVOUS_TIMEOUT_S", RENDEZVOUS_TIMEOUT_S),
                   _seconds(environ, "HYPERPLANE_COLLECTIVE_TIMEOUT_S", COLLECTIVE_TIMEOUT_S))

    @property
    def world_size(self) -> int:
        return len(self.hosts) * self.processes_per_host

    @property
    def master(self) -> str:
        return self.hosts[0] if len(self.hosts) > 1 else "127.0.0.1"

    def rank(self, local_rank: int) -> int:
        return self.hosts.index(self.current_host) * self.processes_per_host + local_rank

    def names(self) -> list[str]:
        """Who each rank is, in rank order: the host, and the process on it when a host runs several."""
        if self.processes_per_host == 1:
            return list(self.hosts)
        return [f"{host} process {i}" for host in self.hosts for i in range(self.processes_per_host)]

    def device(self, local_rank: int) -> torch.device:
        return torch.device("cuda", local_rank % self.gpus) if self.gpus else torch.device("cpu")

    def backend(self, local_rank: int) -> str:
        return "nccl" if self.device(local_rank).type == "cuda" else "gloo"

    def describe(self, local_rank: int) -> str:
        """The first log line of every process."""
        return (f"hosts={','.join(self.hosts)} world_size={self.world_size} rank={self.rank(local_rank)} "
                f"local_rank={local_rank} backend={self.backend(local_rank) if self.world_size > 1 else 'none'} "
                f"device={self.device(local_rank)} master={self.master}:{self.master_port} "
                f"interface={self.interface or 'default'}")

    @contextlib.contextmanager
    def joined(self, local_rank: int) -> Iterator[Group]:
        """The Group of this process; for several, joined on torch.distributed and left afterwards."""
        device = self.device(local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if self.world_size == 1:
            yield Group.single(device)
            return
        if self.interface is not None:
            os.environ.setdefault("GLOO_SOCKET_IFNAME", self.interface)
            os.environ.setdefault("NCCL_SOCKET_IFNAME", self.interface)
        rank = self.rank(local_rank)
        store = self._rendezvous(rank)
        dist.init_process_group(self.backend(local_rank), store=PrefixStore("hyperplane", store), rank=rank,
                                world_size=self.world_size, timeout=timedelta(seconds=self.collective_timeout_s))
        try:
            yield Group.joined(rank, self.world_size, self.names(), device)
        finally:
            dist.destroy_process_group()

    def _rendezvous(self, rank: int) -> TCPStore:
        deadline = time.monotonic() + self.rendezvous_timeout_s
        timeout = timedelta(seconds=self.rendezvous_timeout_s)
        if rank == 0:
            # The server listens on every interface; rank 0's own client reaches it over loopback.
            store = TCPStore("127.0.0.1", self.master_port, self.world_size, True, timeout,
                                  wait_for_workers=False)
        else:
            self._reach_master(deadline)
            store = TCPStore(self.master, self.master_port, self.world_size, False,
                                  timedelta(seconds=max(deadline - time.monotonic(), 1.0)))
        names = self.names()
        store.set(f"joined/{rank}", names[rank])
        if rank == 0:
            keys = [f"joined/{r}" for r in range(self.world_size)]
            try:
                store.wait(keys, timedelta(seconds=max(deadline - time.monotonic(), 1.0)))
            except (RuntimeError, dist.DistError):
                missing = [names[r] for r, key in enumerate(keys) if not store.check([key])]
                raise ClusterError(
                    f"{', '.join(missing)} did not join the training within {self.rendezvous_timeout_s:g} s "
                    f"(the master {self.hosts[0]} waited on port {self.master_port}); "
                    f"{self.world_size - len(missing)} of {self.world_size} processes arrived. Check that "
                    "every host can reach the first one on that port (security groups, VPC), or raise "
                    "HYPERPLANE_RENDEZVOUS_TIMEOUT_S") from None
        log.info("rank %d of %d joined the master %s:%d", rank, self.world_size, self.master, self.master_port)
        return store

    def _reach_master(self, deadline: float) -> None:
        """Resolves and connects to the master until it answers or the deadline passes (ClusterError)."""
        last = ""
        while True:
            try:
                with socket.create_connection((self.master, self.master_port), timeout=2):
                    return
            except OSError as error:
                last = f"{type(error).__name__}: {error}"
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"{self.current_host} could not reach the master {self.master}:{self.master_port} within "
                    f"{self.rendezvous_timeout_s:g} s ({last}); the training needs every host to reach the first "
                    f"one ({self.hosts[0]}) on that port: check that it started and that the network lets "
                    "them talk, or raise HYPERPLANE_RENDEZVOUS_TIMEOUT_S")
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))


def _interface(named: str, net: pathlib.Path) -> str | None:
    """The interface named in resourceconfig.json if this machine has it, else the first one up that is
    not loopback; None when nothing fits (gloo then resolves the host name itself)."""
    if named and (net / named).exists():
        return named
    candidates = sorted(p.name for p in net.iterdir() if p.name != "lo") if net.is_dir() else []
    up = [name for name in candidates if _is_up(net / name)]
    chosen = next(iter(up or candidates), None)
    if named:
        log.warning("resourceconfig.json names the network interface %r, which this machine does not have; "
                    "using %s", named, chosen or "the default")
    return chosen


def _is_up(interface: pathlib.Path) -> bool:
    try:
        return (interface / "operstate").read_text().strip() in ("up", "unknown")
    except OSError:
        return False


def _positive_int(environ: Mapping[str, str], name: str, default: int) -> int:
    return _positive(environ, name, default, int, "a positive integer")


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    return _positive(environ, name, default, float, "a positive number of seconds")


def _positive(environ: Mapping[str, str], name: str, default: N, parse: Callable[[str], N], what: str) -> N:
    """The variable's value read by `parse` (the default when unset or empty); ClusterError naming it when
    it does not parse or is not above 0."""
    text = environ.get(name)
    if not text:
        return default
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or not value > 0:
        raise ClusterError(f"{name} must be {what}, got {text!r}")
    return value
