"""Logging that an attack cannot turn into a flood: repeated records are rate-limited."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitFilter(logging.Filter):
    """Lets through at most `burst` records of one kind (logger, level and message template,
    so that 'Too many open files' from 20,000 sockets is one kind) per `period_s`; the first
    record of the next period says how many were dropped."""

    def __init__(self, burst: int = 5, period_s: float = 60.0, max_kinds: int = 1024) -> None:
        super().__init__()
        self.burst = burst
        self.period_s = period_s
        self.max_kinds = max_kinds
        self._kinds: dict[tuple, list] = {}  # kind -> [period start, passed, dropped]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg)[:200])
        now = time.monotonic()
        with self._lock:
            entry = self._kinds.get(kind)
            if entry is None or now - entry[0] >= self.period_s:
                dropped = entry[2] if entry else 0
                if entry is None and len(self._kinds) >= self.max_kinds:
                    self._kinds.clear()  # bounded: forget old kinds rather than grow
                self._kinds[kind] = [now, 1, 0]
                if dropped:
                    record.msg = f"{record.msg} [{dropped} similar messages dropped]"
                return True
            if entry[1] < self.burst:
                entry[1] += 1
                if entry[1] == self.burst:
                    record.msg = f"{record.msg} [repeated: more like it are dropped for a while]"
                return True
            entry[2] += 1
            return False


def install(level: str) -> None:
    """The server's logging: timestamped lines on stderr, rate-limited per kind."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RateLimitFilter())
