"""Loopback ports for the processes the tests start."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from llmfleet_dev import net


class KernelGivingPorts:
    """A stand-in for ``socket.socket`` whose ``bind(0)`` gives the ports listed, in order."""

    def __init__(self, ports: list[int]) -> None:
        self._ports: Iterator[int] = iter(ports)

    def __call__(self, *_: Any) -> KernelGivingPorts:
        self._port = next(self._ports)
        return self

    def __enter__(self) -> KernelGivingPorts:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def bind(self, _: tuple[str, int]) -> None:
        pass

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self._port)


def test_a_port_the_kernel_gives_twice_is_handed_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(net, "_HANDED_OUT", net.deque(maxlen=8))
    monkeypatch.setattr(net.socket, "socket", KernelGivingPorts([40001, 40001, 40001, 40002]))
    assert [net.free_port(), net.free_port()] == [40001, 40002]


def test_many_ports_in_a_row_are_distinct_and_free() -> None:
    ports = [net.free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[-1]))  # nothing holds it
