"""One server-wide budget for the bytes that requests make the server hold, and glibc tuning
so that memory freed after a burst goes back to the system.

Charged to the budget while held: HTTP request bodies (times their parsing copies), gRPC request
messages until answered, stream image tables until the stream ends, decoded pixels until
preprocessed, and preprocessed inputs until the model has run. A request that would take the
total over the budget is refused at once (OverloadedError: RESOURCE_EXHAUSTED, HTTP 429), having
changed nothing. Model weights, runtime arenas and the embedding cache (bounded on its own by
--cache-mb) are outside it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import threading
from pathlib import Path

from imgsim_server.errors import OverloadedError

log = logging.getLogger(__name__)

MiB = 1024 * 1024


def physical_memory_bytes() -> int:
    """The memory this process may use: the machine's, or its cgroup's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_budget_mb() -> int:
    """A quarter of the process's memory, between 256 MiB and 4 GiB: room for the model, the
    cache and the runtimes beside it, even with a few replicas on one machine."""
    return int(min(4096, max(256, physical_memory_bytes() // 4 // MiB)))


class MemoryBudget:
    """A thread-safe count of the bytes held for requests, bounded by `limit` bytes; large
    charges are bounded by `large_share` of it."""

    def __init__(self, limit: int, large_share: float = 0.5) -> None:
        self.limit = limit
        # Charges of at least 1% of the budget (big images) may fill only `large_share` of it,
        # so that clients sending big images can never starve the ordinary ones.
        self.large = limit // 100
        self.large_limit = int(limit * large_share)
        self.held = 0
        self.peak = 0  # the most held since the last take_peak()
        self._lock = threading.Lock()

    def take(self, n: int, what: str) -> int:
        """Charge `n` bytes, or raise OverloadedError (nothing charged) when they do not fit.
        Returns `n`, for the caller to give back."""
        if n <= 0:
            return 0
        with self._lock:
            if self.held + n > (self.large_limit if n >= self.large else self.limit):
                held = self.held
            else:
                self.held += n
                self.peak = max(self.peak, self.held)
                return n
        raise OverloadedError(
            f"{what} needs {n / MiB:.1f} MiB and the server holds {held / MiB:.0f} of its "
            f"{self.limit / MiB:.0f} MiB memory budget (--memory-budget-mb); retry later"
        )

    def give(self, n: int) -> None:
        if n > 0:
            with self._lock:
                self.held -= n

    def take_peak(self) -> tuple[int, int]:
        """(the most held since the last call, held now); the peak starts again from now."""
        with self._lock:
            peak, held = self.peak, self.held
            self.peak = held
        return peak, held


class Charge:
    """Bytes charged for one piece of work, given back exactly once (from any thread)."""

    __slots__ = ("_budget", "_lock", "bytes")

    def __init__(self, budget: MemoryBudget | None) -> None:
        self._budget = budget
        self._lock = threading.Lock()
        self.bytes = 0

    def add(self, n: int, what: str) -> None:
        if self._budget is not None:
            taken = self._budget.take(n, what)
            with self._lock:
                self.bytes += taken

    def release(self, n: int | None = None) -> None:
        """Give back `n` bytes of this charge (all when None)."""
        with self._lock:
            n = self.bytes if n is None else min(n, self.bytes)
            self.bytes -= n
        if self._budget is not None:
            self._budget.give(n)


# ---- glibc -----------------------------------------------------------------------------------

_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def tune_malloc(arenas: int = 2) -> bool:
    """Few arenas, and every block from the heap (M_MMAP_MAX 0), never from a fresh mmap.

    A fresh mmap is faulted in page by page: copying a 50 MB image into one took ~90 ms here,
    with the GIL held, on every copy; reused heap pages cost nothing. What a burst leaves free is
    given back by `trim` (malloc_trim returns free heap pages, not only the top), which the
    server runs once each burst is over. Returns False where the C library is not glibc."""
    if _LIBC is None or not hasattr(_LIBC, "mallopt"):
        return False
    return _LIBC.mallopt(_M_ARENA_MAX, arenas) == 1 and _LIBC.mallopt(_M_MMAP_MAX, 0) == 1


def trim() -> None:
    """Give free heap memory back to the system (glibc malloc_trim)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, from /proc (0 where there is no /proc)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Trimmer:
    """A thread that gives freed memory back (malloc_trim): once a burst is over (holdings
    below `idle_bytes` after having risen above `burst_bytes`, with a full gc first), and during
    one whenever `during_bytes` or more were released since its last look."""

    def __init__(
        self,
        budget: MemoryBudget,
        period_s: float = 0.5,
        burst_bytes: int = 32 * MiB,
        idle_bytes: int = 8 * MiB,
        during_bytes: int = 128 * MiB,
    ) -> None:
        self.budget = budget
        self.during_bytes = during_bytes
        self.period_s = period_s
        self.burst_bytes = burst_bytes
        self.idle_bytes = idle_bytes
        self.trims = 0
        self._stop = threading.Event()
        self._high = 0
        self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
        if _LIBC is not None:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            recent, held = self.budget.take_peak()
            self._high = max(self._high, recent)
            if self._high >= self.burst_bytes and held <= self.idle_bytes:
                gc.collect()  # buffers still held by reference cycles, then the heap
                trim()
                self.trims += 1
                self._high = 0
            elif recent - held >= self.during_bytes:
                trim()  # mid-burst, after a large release (ctypes drops the GIL meanwhile)
                self.trims += 1

    def stop(self) -> None:
        self._stop.set()
