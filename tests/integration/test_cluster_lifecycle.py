"""`make cluster-up` / `cluster-down` semantics, on a second, throwaway cluster."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from llmfleet_dev.localcluster import AlreadyRunningError, LocalCluster, Topology, pid_alive


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_refuses_a_second_cluster_and_down_leaves_nothing(tmp_path: Path) -> None:
    cluster = LocalCluster(
        tmp_path / "c", Topology(gpu_nodes=1, gpus_per_node=2, cpu_nodes=0), tie_to_parent=True
    )
    state = cluster.up()
    try:
        assert cluster.running()
        with pytest.raises(AlreadyRunningError, match="already running"):
            LocalCluster(tmp_path / "c").up()
        nodes = cluster.kubectl("get", "nodes", "-o", "name").stdout.split()
        assert nodes == ["node/gpu-node-0"]
        ports = [p for name, p in state.ports.items() if name != "etcd-peer"]
        assert all(listening(p) for p in ports if p != state.ports["kwok"])
    finally:
        stopped = cluster.down()
    assert set(stopped) == {
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    }
    assert not any(pid_alive(pid) for pid in state.pids.values())
    assert not any(listening(p) for p in state.ports.values())
    assert not cluster.running()
    assert cluster.down() == []  # idempotent
