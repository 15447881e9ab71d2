"""Limits uvicorn lacks: a deadline to receive each whole request, and a cap on open connections.

uvicorn closes idle keep-alive connections, but a connection that sends its request a byte at a
time resets that timer with every byte and is never closed (uvicorn issue #157), and nothing
bounds how many are open: enough of them exhaust the process's file descriptors, and then gRPC
fails too. This protocol (uvicorn's own h11 protocol, subclassed) gives every request
`request_timeout` seconds for its headers and as long again plus its Content-Length at
`min_body_rate` for its body, then answers 408 and closes, as nginx's client_header_timeout and
client_body_timeout do. When `max_connections` are open, a new one makes room by closing the
connection that has waited longest for its headers; only when none waits is it refused.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from dataclasses import dataclass, field

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

_TIMEOUT_BODY = (
    b'{"error": {"code": "DEADLINE_EXCEEDED", "message": "the request was not received in time '
    b'(--http-request-timeout)"}}'
)
TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


def connection_cap(reserve: int = 256) -> int:
    """Open HTTP connections allowed from the open-file limit: half of what is left after
    `reserve` descriptors (gRPC's listener and connections, model files, logs), at least 16."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, (soft - reserve) // 2)


@dataclass
class HttpLimits:
    """Settings of the protocol, and counters of what it refused (for /metrics and tests)."""

    request_timeout_s: float = 30.0
    min_body_rate: int = 256 * 1024
    max_connections: int = field(default_factory=connection_cap)
    timed_out: int = 0
    refused: int = 0

    def __post_init__(self) -> None:
        self.max_connections = self.max_connections or connection_cap()


def protocol_class(limits: HttpLimits) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol bound to `limits` (uvicorn.Config takes a protocol class)."""

    class LimitedH11Protocol(_LimitedH11Protocol):
        pass

    LimitedH11Protocol.limits = limits
    return LimitedH11Protocol


class _LimitedH11Protocol(H11Protocol):
    limits: HttpLimits

    _deadline: asyncio.TimerHandle | None = None
    _phase = "headers"
    _since = 0.0
    _served = 0  # requests answered on this connection
    _started = False  # bytes of the current request have arrived

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            # Full: make room by closing the connection that has waited longest for a
            # request's headers (a slow client, or an idle keep-alive one), so that slow
            # clients cannot lock everyone else out; if every one is busy, refuse this one.
            victim = self._longest_waiting()
            self.limits.refused += 1
            log.warning(
                "HTTP connections at the cap of %d (--http-max-connections): %s",
                self.limits.max_connections,
                "closed the one waiting longest for its headers" if victim else "refused one",
            )
            if victim is None:
                transport.abort()
                return
            victim._too_slow()
        self._arm(self.limits.request_timeout_s, "headers")

    def _longest_waiting(self) -> _LimitedH11Protocol | None:
        waiting = [
            c
            for c in self.connections
            if c is not self
            and isinstance(c, _LimitedH11Protocol)
            and c._phase == "headers"
            and c._deadline is not None
            and (c.cycle is None or c.cycle.response_complete)
        ]
        # Connections that never completed a request go first: an idle keep-alive one has
        # shown it is a real client.
        return min(waiting, key=lambda c: (c._served > 0, c._since), default=None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._started = True
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY and self._phase == "headers":
            size = next((v for k, v in self.headers or () if k == b"content-length"), b"0")
            length = int(size) if size.isdigit() else 0
            body_s = self.limits.request_timeout_s + length / max(1, self.limits.min_body_rate)
            self._arm(body_s, "body")
        elif state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR):
            self._disarm()  # the request is in; the app's own deadline bounds the answer

    def on_response_complete(self) -> None:
        self._served += 1
        self._started = False
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm(self.limits.request_timeout_s, "headers")  # the next request's clock

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._phase = phase
        self._since = self.loop.time()
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        self.limits.timed_out += 1
        log.warning(
            "HTTP connection closed: its request %s did not arrive within the deadline "
            "(--http-request-timeout)",
            self._phase,
        )
        # 408 to a request under way; an idle keep-alive connection is closed silently.
        if self._started and (self.cycle is None or not self.cycle.response_started):
            self.transport.write(TIMEOUT_RESPONSE)
        if self.cycle is not None:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()
