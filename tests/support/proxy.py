"""A TCP proxy the test controls: one address in front of a server that can change.

It stands in for what puts a switchover behind one address (HAProxy with Patroni's
`GET /primary` checks, a cloud's writer endpoint, a DNS name): `switch(port)` points new
connections at another server and, like HAProxy's `on-marked-down shutdown-sessions`,
closes every session open through the old one. Threads, not the test's event loop: the
service it serves runs in a subprocess or on that loop, and must not share its fate.
"""

from __future__ import annotations

import select
import socket
import threading
from contextlib import suppress
from urllib.parse import urlsplit

from tests.support.cluster import free_port

CHUNK = 65536


class TcpProxy:
    """`with TcpProxy(target_port) as proxy:` listens on 127.0.0.1:`proxy.port`."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sessions: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._accepting = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)

    @classmethod
    def before(cls, database_url: str) -> TcpProxy:
        """A proxy to the server `database_url` names; `url()` is its way through."""
        return cls(urlsplit(database_url).port or 5432)

    def url(self, database_url: str) -> str:
        """`database_url` through this proxy: its user, database and parameters kept."""
        parts = urlsplit(database_url)
        who = parts.netloc.rpartition("@")[0]
        return parts._replace(netloc=f"{who}@127.0.0.1:{self.port}").geturl()

    def __enter__(self) -> TcpProxy:
        self._accepting.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def switch(self, target_port: int) -> None:
        """New connections go to `target_port`; every open session is closed."""
        with self._lock:
            self.target_port = target_port
            sessions, self._sessions = self._sessions, set()
        for pair in sessions:
            _close(pair)

    def sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close(self) -> None:
        self._closed = True
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.switch(self.target_port)
        if self._accepting.is_alive():
            self._accepting.join(5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                port = self.target_port
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                client.close()  # nothing listens there: the client sees the close
                continue
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                self._sessions.add(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket]) -> None:
        client, upstream = pair
        peer = {client: upstream, upstream: client}
        try:
            while True:
                readable, _, _ = select.select([client, upstream], [], [], 1.0)
                with self._lock:
                    if pair not in self._sessions:
                        return
                for sock in readable:
                    data = sock.recv(CHUNK)
                    if not data:
                        return
                    peer[sock].sendall(data)
        except (OSError, ValueError):  # ValueError: a socket closed by switch()
            return
        finally:
            with self._lock:
                self._sessions.discard(pair)
            _close(pair)


def _close(pair: tuple[socket.socket, socket.socket]) -> None:
    for sock in pair:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
