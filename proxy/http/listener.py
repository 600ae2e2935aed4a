"""The public listening sockets and their accept loop.

libuv, under uvloop, accepts one connection per event-loop iteration, and under load one
iteration takes tens of milliseconds on a small machine: when 500 clients connected at
once, the last ones waited 1-5 s in the kernel's accept queue (strace: one `accept4` per
`epoll_pwait`; bench/RESULTS.md). Here every waiting connection, up to ACCEPT_BATCH, is
taken each time a socket is readable, on either event loop, as the standard loop's own
`create_server` does.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable

from proxy.telemetry.logs import RateLimitedWarning

log = logging.getLogger("rollout.listener")

BACKLOG = 4096
ACCEPT_BATCH = 1024  # connections taken per readiness; any more wait one loop iteration
# Out of descriptors or memory: accepting again at once would spin on a socket that stays
# readable; the standard loop pauses for the same second.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
PAUSE_SECONDS = 1.0

ProtocolFactory = Callable[[], asyncio.Protocol]


def open_sockets(host: str, port: int, *, reuse_port: bool) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address `host` resolves to."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                # One socket per family, as the standard loop binds them.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                reason = (exc.strerror or str(exc)).lower()
                where = f"{host}:{port}"
                raise OSError(exc.errno, f"cannot bind {where}: {reason}") from None
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Listener:
    """Accepts on `sockets` and hands each connection to a transport of the running loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        protocol_factory: ProtocolFactory,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.loop = loop
        # Read per accepted connection: swapping it (certificate rotation) changes the
        # handshakes that start after, never one under way or a connection already open.
        self.ssl_context = ssl_context
        self.sockets = sockets
        self.protocol_factory = protocol_factory
        self.closed = False
        self.trouble = RateLimitedWarning(log)
        # Until its transport exists, a connection's setup task is referenced only here.
        self._setting_up: set[asyncio.Task[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]]
        self._setting_up = set()

    def start(self) -> None:
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self.accept_waiting, sock)

    def close(self) -> None:
        """Stop accepting and close the sockets (connections still queued are refused)."""
        if self.closed:
            return
        self.closed = True
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    def accept_waiting(self, sock: socket.socket) -> None:
        """Take the connections waiting on `sock`, up to ACCEPT_BATCH: one readiness."""
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self.trouble.warn("cannot accept: %s; pausing %g s", exc, PAUSE_SECONDS)
                    self._pause(sock)
                else:
                    self.trouble.warn("cannot accept: %s", exc)
                return
            self._set_up(conn)

    def _set_up(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        setup = self.loop.connect_accepted_socket(self.protocol_factory, conn, ssl=self.ssl_context)
        task = self.loop.create_task(setup)
        self._setting_up.add(task)
        task.add_done_callback(self._set_up_done)

    def _set_up_done(
        self, task: asyncio.Task[tuple[asyncio.BaseTransport, asyncio.BaseProtocol]]
    ) -> None:
        self._setting_up.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # The client reset the connection before its transport existed: nothing to do
            # but say so (the loop closed the socket).
            log.debug("connection not set up: %s", exc)

    def _pause(self, sock: socket.socket) -> None:
        self.loop.remove_reader(sock.fileno())
        self.loop.call_later(PAUSE_SECONDS, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        if not self.closed:
            self.loop.add_reader(sock.fileno(), self.accept_waiting, sock)
