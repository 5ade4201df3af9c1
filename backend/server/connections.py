"""Connection limits for ``archviz serve``: uvicorn's h11 protocol with two additions.

uvicorn (0.54) closes a kept-alive connection after ``timeout_keep_alive`` and answers 503
past ``limit_concurrency``, but only once a request has arrived: a connection that never
sends a complete request head stays open for ever, and each one holds a file descriptor.
A thousand of them exhaust the descriptors (``accept`` fails with EMFILE) and nobody, not
even ``/v1/health``, gets in. So this protocol also

- closes a connection whose request head is not complete within ``header_timeout``
  seconds (a half-sent or idle-from-the-start connection, as a slowloris client keeps);
- keeps the number of open connections at ``max_connections``, set below the descriptor
  limit: a new connection over the limit closes the oldest connection that is idle
  (no request in progress), so a fresh client such as a health check always gets in;
  when every connection is busy, the new one gets ``503`` with ``Retry-After`` at once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket

try:
    import resource
except ImportError:  # Windows: no descriptor limit of this kind
    resource = None

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("archviz.backend")

#: Descriptors kept free for files, model weights, and connections accepted but not yet
#: counted or closed (asyncio accepts up to ``BACKLOG`` at once and closes a connection
#: one loop turn later).
RESERVED_FDS = 128
#: Listen backlog, which asyncio also uses as the number of connections it accepts in one
#: go: kept small so a flood cannot push the descriptors past the limit between turns.
BACKLOG = 32
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_KEEP_ALIVE = 5


def tcp_socket(family: int = socket.AF_INET) -> socket.socket:
    """A TCP socket for the server to bind and listen on, made with ``IPPROTO_TCP`` as its
    protocol: asyncio turns Nagle's algorithm off (``TCP_NODELAY``) only on accepted
    connections whose socket says so, and ``socket.socket(family, SOCK_STREAM)`` says 0.
    With Nagle on, h11 writes a response's head and body separately and, on a kept-alive
    connection, the body waits for the client's delayed ACK: about 40 ms per request on
    Linux loopback (each status poll of a client that keeps its connection)."""
    return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)


def descriptor_limit() -> int | None:
    """The soft open-file limit, or None when there is none."""
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def default_max_connections() -> int:
    """1000, or the open-file limit less :data:`RESERVED_FDS` (128) where that is lower."""
    soft = descriptor_limit()
    if soft is None:
        return DEFAULT_MAX_CONNECTIONS
    return max(8, min(DEFAULT_MAX_CONNECTIONS, soft - RESERVED_FDS))


def check_max_connections(value: int) -> str | None:
    """Why ``value`` cannot be the connection limit, or None."""
    soft = descriptor_limit()
    if value < 1:
        return f"--max-connections must be at least 1, got {value}"
    if soft is not None and value > soft - RESERVED_FDS:
        return (f"--max-connections {value} is too close to the open-file limit ({soft}; {RESERVED_FDS} are kept "
                f"for files): use at most {max(1, soft - RESERVED_FDS)}, or raise the limit (ulimit -n)")
    return None


_BODY = json.dumps({"detail": "the server has too many connections open; try again shortly",
                    "error": {"type": "ServiceUnavailable",
                              "message": "the server has too many connections open; try again shortly"}}).encode()
_REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"connection: close\r\ncontent-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


def guarded_protocol(max_connections: int, header_timeout: float) -> type[H11Protocol]:
    """The H11Protocol subclass for ``uvicorn.Config(http=...)`` with these limits."""
    counter = itertools.count()

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._archviz_order = next(counter)
            self._archviz_head_timer: asyncio.TimerHandle | None = None
            super().connection_made(transport)
            if len(self.connections) > max_connections and not self._evict_idle():
                self.connections.discard(self)
                transport.write(_REFUSAL)
                transport.close()
                return
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm_head_timer()  # a whole request head arrived
            elif self._archviz_head_timer is None and not self.transport.is_closing():
                self._arm_head_timer()  # bytes of a next request on a kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _evict_idle(self) -> bool:
            idle = [c for c in self.connections if c is not self and getattr(c, "_idle", lambda: False)()]
            if not idle:
                return False
            oldest = min(idle, key=lambda c: getattr(c, "_archviz_order", 0))
            oldest.connections.discard(oldest)
            oldest.transport.close()
            return True

        def _arm_head_timer(self) -> None:
            self._disarm_head_timer()
            self._archviz_head_timer = self.loop.call_later(header_timeout, self._head_timeout)

        def _disarm_head_timer(self) -> None:
            timer = getattr(self, "_archviz_head_timer", None)
            if timer is not None:
                timer.cancel()
                self._archviz_head_timer = None

        def _head_timeout(self) -> None:
            self._archviz_head_timer = None
            if self._idle() and not self.transport.is_closing():
                log.debug("closing a connection that sent no complete request in %ss", header_timeout)
                self.transport.close()

    return GuardedH11Protocol
