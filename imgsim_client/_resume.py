"""The one resumable stream loop, for scoring pairs and embedding images alike: on UNAVAILABLE
(once a server has answered), reconnect with exponential backoff and open a new stream with
only the items not answered yet, which round_robin places on a live backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

from imgsim_client._channel import ImgsimError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to reconnect after the server becomes UNAVAILABLE."""

    retries: int = 5
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    multiplier: float = 2.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before reconnect number `attempt` (1-based)."""
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))

    def should_reconnect(self, err: ImgsimError, client, done: int) -> bool:
        """Whether a stream that failed with `err`, after `done` reconnects in a row without
        progress, opens again: only for UNAVAILABLE, only once a server has answered on this
        channel (a wrong address fails at once), and at most `retries` times in a row."""
        return (
            err.code == grpc.StatusCode.UNAVAILABLE
            and client.server_answered
            and done < self.retries
        )


def resumable(
    client,
    pending: Callable[[], list[T]],
    open_stream: Callable[[list[T]], Iterator[R]],
    on_result: Callable[[R], None],
    retry: RetryPolicy,
    stop: threading.Event | None = None,
    on_reconnect: Callable[[ImgsimError, int, float, list[T]], None] | None = None,
) -> None:
    """Run `open_stream(pending())` and hand each result to `on_result` until nothing is
    pending; a stream lost with UNAVAILABLE reopens (per `retry`) with what `pending()` says is
    left. `stop` ends the loop early (another stream failed, or Ctrl-C). `on_reconnect(error,
    attempt, wait_s, todo)` is told before each wait. A stream that answered anything before
    it was lost starts the count of reconnects again: a day-long run through routine
    connection ages (GOAWAY) and rolling restarts must not use up `retry.retries`, which is
    for a server that stays away."""
    reconnects = 0
    while True:
        todo = pending()
        if not todo or (stop is not None and stop.is_set()):
            return
        answered = False
        try:
            for result in open_stream(todo):
                answered = True
                on_result(result)
            return
        except ImgsimError as err:
            if answered:
                reconnects = 0
            stopped = stop is not None and stop.is_set()
            if stopped or not retry.should_reconnect(err, client, reconnects):
                raise
            reconnects += 1
            wait = retry.backoff(reconnects)
            if on_reconnect is not None:
                on_reconnect(err, reconnects, wait, todo)
            if stop is not None:
                if stop.wait(wait):
                    return
            else:
                time.sleep(wait)
