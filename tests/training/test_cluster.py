"""Cluster.plan: who is rank 0, how many processes, which network interface, from resourceconfig.json."""

from __future__ import annotations

import pathlib

import pytest

from container.cluster import MASTER_PORT, Cluster, ClusterError


def fake_net(root: pathlib.Path, interfaces: dict[str, str]) -> pathlib.Path:
    for name, state in interfaces.items():
        (root / name).mkdir(parents=True)
        (root / name / "operstate").write_text(state + "\n")
    return root


def test_world_is_sorted_hosts_times_one_process_per_gpu(tmp_path: pathlib.Path) -> None:
    net = fake_net(tmp_path, {"lo": "unknown", "eth0": "up"})
    resources = {"current_host": "algo-1", "hosts": ["algo-2", "algo-1"], "network_interface_name": "eth0"}
    cluster = Cluster.plan(resources, {}, gpus=4, net=net)
    assert cluster.hosts == ("algo-1", "algo-2") and cluster.world_size == 8
    assert [cluster.rank(i) for i in range(4)] == [0, 1, 2, 3]
    other = Cluster.plan({**resources, "current_host": "algo-2"}, {}, gpus=4, net=net)
    assert [other.rank(i) for i in range(4)] == [4, 5, 6, 7]
    assert (other.master, other.master_port, other.backend(0), str(other.device(3))) == (
        "algo-1", MASTER_PORT, "nccl", "cuda:3")
    assert other.names()[5] == "algo-2 process 1"
    cpu = Cluster.plan(resources, {}, gpus=0, net=net)
    assert (cpu.world_size, cpu.backend(0), cpu.names()) == (2, "gloo", ["algo-1", "algo-2"])
    assert cpu.describe(0).startswith("hosts=algo-1,algo-2 world_size=2 rank=0 local_rank=0 backend=gloo device=cpu")


def test_the_named_interface_is_used_only_when_the_container_has_it(tmp_path: pathlib.Path) -> None:
    net = fake_net(tmp_path, {"lo": "unknown", "eth1": "down", "eth0": "up"})
    hosts = {"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]}
    assert Cluster.plan({**hosts, "network_interface_name": "eth1"}, {}, 0, net).interface == "eth1"
    # SDK v3 local mode writes ethwe, which its containers do not have: the first interface that is up
    assert Cluster.plan({**hosts, "network_interface_name": "ethwe"}, {}, 0, net).interface == "eth0"
    single = Cluster.plan({"current_host": "algo-1", "hosts": ["algo-1"]}, {}, 0, net)
    assert (single.world_size, single.master, single.interface) == (1, "127.0.0.1", None)
    pair = Cluster.plan({"current_host": "algo-1", "hosts": ["algo-1"]}, {"HYPERPLANE_PROCESSES_PER_HOST": "2"}, 0,
                        net)
    assert (pair.world_size, pair.interface) == (2, "lo")


@pytest.mark.parametrize(("environ", "words"), [
    ({"HYPERPLANE_PROCESSES_PER_HOST": "0"}, "HYPERPLANE_PROCESSES_PER_HOST must be a positive integer"),
    ({"HYPERPLANE_MASTER_PORT": "http"}, "HYPERPLANE_MASTER_PORT must be a positive integer"),
    ({"HYPERPLANE_RENDEZVOUS_TIMEOUT_S": "-1"}, "HYPERPLANE_RENDEZVOUS_TIMEOUT_S must be a positive number"),
])
def test_bad_settings_fail_with_their_name(environ: dict[str, str], words: str) -> None:
    with pytest.raises(ClusterError, match=words):
        Cluster.plan({"current_host": "algo-1", "hosts": ["algo-1"]}, environ, 0)


def test_a_current_host_outside_the_hosts_is_refused() -> None:
    with pytest.raises(ClusterError, match="current_host 'algo-3' is not among the hosts algo-1, algo-2"):
        Cluster.plan({"current_host": "algo-3", "hosts": ["algo-1", "algo-2"]}, {}, 0)
