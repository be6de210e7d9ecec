"""Loopback networking for local processes (standard library only)."""

from __future__ import annotations

import socket
import threading
from collections import deque

#: Ports this process handed out lately, oldest first (a bounded memory: the ephemeral
#: range holds about 28 000).
_HANDED_OUT: deque[int] = deque(maxlen=4096)
_LOCK = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that this process has
    not handed out lately.

    The kernel may give the port of a socket that was just closed to the next ``bind`` again,
    so two calls in a row could name one port twice: an operator's health and metrics ports
    would then collide, and whichever server binds second fails.
    """
    with _LOCK:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _HANDED_OUT:
                _HANDED_OUT.append(port)
                return port
