"""Ports for servers the tests start in other processes (tests/servers.py): none that a bind to
port 0 could be handed before the child binds it, and none twice in a row."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from tests.servers import PORTS_FROM, PORTS_PER_WORKER, free_port


def test_ports_are_below_the_ephemeral_range_in_this_workers_slice_and_in_turn() -> None:
    ports = [free_port() for _ in range(5)]
    assert len(set(ports)) == 5
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    first = PORTS_FROM + int(worker[2:]) * PORTS_PER_WORKER
    assert all(first <= port < first + PORTS_PER_WORKER < ephemeral for port in ports)


def test_a_port_in_use_is_skipped() -> None:
    taken = free_port() + 1  # the next in turn
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", taken))
        sock.listen()
        assert free_port() != taken
