"""Fixtures of the unit tests; helpers they import live in core_helpers (a name of its own, so that
collecting tests/unit and tests/e2e in one run never confuses the two conftest modules)."""
import socket
import threading

import pytest

from core_helpers import Pair
from vrouter.io import ipc
from vrouter.processes.agent import Agent


@pytest.fixture
def pair():
    return Pair()


@pytest.fixture
def agent_channel(tmp_path):
    """`start(config) -> (agent, conn)`: an Agent of srv1 given `config`, running its loop in a
    thread, connected to a listening socket in the forwarder's place; `conn` is the forwarder's end
    (5 s timeouts). The agent is stopped and the sockets closed after the test."""
    started = []

    def start(config):
        agent = Agent(str(tmp_path), "srv1")
        agent.on_config(1, config)
        listener = ipc.listen(ipc.agent_socket(tmp_path, "srv1"), socket.SOCK_SEQPACKET)
        listener.setblocking(True)
        listener.settimeout(5)
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        sockets = [listener]
        started.append((agent, thread, sockets))
        conn, _ = listener.accept()
        conn.settimeout(5)
        sockets.append(conn)
        return agent, conn

    yield start
    for agent, thread, sockets in started:
        agent.running = False
        thread.join(5)
        for s in sockets:
            s.close()
