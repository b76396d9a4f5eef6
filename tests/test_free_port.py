"""Ports for servers the tests start in other processes (tests/servers.py): none that a bind to
port 0 could be handed before the child binds it, and none twice in a row."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.servers import free_port, worker_ports


def test_ports_are_below_the_ephemeral_range_in_this_workers_slice_and_in_turn() -> None:
    ports = [free_port() for _ in range(5)]
    assert len(set(ports)) == 5
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(port in worker_ports() for port in ports)
    assert worker_ports()[-1] < ephemeral


def test_a_port_in_use_is_skipped() -> None:
    ports = worker_ports()
    given = free_port()
    taken = ports[(ports.index(given) + 1) % len(ports)]  # the next in turn
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", taken))
        sock.listen()
        assert free_port() != taken
