"""`imgsim-client perf`: load a target at several concurrency levels (after Triton's
perf_analyzer) and report throughput, latency and the server's batching per level.

    imgsim-client perf photos/ --server ipv4:10.0.0.1:50051,10.0.0.2:50051 \\
        --concurrency 1,4,16,64 --duration 10 -o perf.json

At concurrency C, C streams (or C unary callers with `--unary`) each keep sending pairs of the
given images for `--duration` seconds (or until `--pairs` per level); a stream keeps at most
`--inflight` pairs unanswered (closed loop, so latency is not just queueing). A pair's latency
runs from the moment its request is handed to gRPC to its answer. Each image sent gets unique
trailing bytes, which decoders ignore, so every image is really embedded (no cache hits)
unless `--cache-hits` is given. Mean batch size and queue time come from GetStats before and after
each level.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from imgsim_client.client import ImgsimClient, PairRequest

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class Level:
    """What one concurrency level measured."""

    concurrency: int
    pairs: int
    errors: int
    seconds: float
    pairs_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_batch: float
    mean_queue_ms: float
    images_embedded: int


def load_images(paths: list[Path]) -> list[bytes]:
    """The bytes of every image file named or found (recursively) in the folders named."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS)
        else:
            files.append(p)
    if len(files) < 2:
        raise ValueError(f"perf needs at least 2 images; found {len(files)} in {paths}")
    return [f.read_bytes() for f in files]


class _Pairs:
    """An endless, thread-safe supply of pairs, with unique bytes unless cache hits are wanted."""

    def __init__(self, images: list[bytes], unique: bool, model: str) -> None:
        self.images = images
        self.unique = unique
        self.model = model
        self._run = os.urandom(6).hex().encode()  # no two runs send the same bytes
        self._n = itertools.count()
        self._lock = threading.Lock()

    def next(self) -> PairRequest:
        with self._lock:
            n = next(self._n)
        a = self.images[n % len(self.images)]
        b = self.images[(n * 7 + 1) % len(self.images)]
        if self.unique:  # after the image's end marker: ignored by decoders, new content hash
            a = a + b"imgsim-perf-%s-a%d" % (self._run, n)
            b = b + b"imgsim-perf-%s-b%d" % (self._run, n)
        return PairRequest(str(n), a, b, model=self.model)


def _model_totals(client: ImgsimClient) -> tuple[int, int, float]:
    """(batches, images, total queue ms) summed over the server's models."""
    stats = client.stats()
    batches = sum(m.batches for m in stats.models)
    images = sum(m.images_embedded for m in stats.models)
    queue = sum(m.mean_queue_ms * m.images_embedded for m in stats.models)
    return batches, images, queue


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_level(
    client: ImgsimClient,
    pairs: _Pairs,
    concurrency: int,
    duration_s: float,
    max_pairs: int | None,
    unary: bool,
    inflight: int = 4,
) -> Level:
    """Drive `concurrency` workers for `duration_s` (or `max_pairs` pairs in all); each stream
    keeps at most `inflight` pairs unanswered."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = threading.Event()
    budget = itertools.count()
    started = time.perf_counter()

    def more() -> bool:
        if stop.is_set() or time.perf_counter() - started >= duration_s:
            return False
        return max_pairs is None or next(budget) < max_pairs

    def record(latency: float | None) -> None:
        with lock:
            if latency is None:
                errors[0] += 1
            else:
                latencies.append(latency)

    def unary_worker() -> None:
        while more():
            pair = pairs.next()
            t = time.perf_counter()
            try:
                client.compare(pair.data_a, pair.data_b, pair.model)
                record(time.perf_counter() - t)
            except Exception:
                record(None)

    def stream_worker() -> None:
        sent: dict[str, float] = {}
        window = threading.Semaphore(inflight)

        def requests():
            while more():
                window.acquire()
                pair = pairs.next()
                sent[pair.pair_id] = time.perf_counter()
                yield pair

        for res in client.compare_stream(requests(), idle_timeout=client.timeout):
            record(time.perf_counter() - sent.pop(res.pair_id) if res.ok else None)
            window.release()

    before = _model_totals(client)
    workers = [
        threading.Thread(target=unary_worker if unary else stream_worker)
        for _ in range(concurrency)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - started
    after = _model_totals(client)
    d_batches, d_images = after[0] - before[0], after[1] - before[1]
    ms = [x * 1000 for x in latencies]
    return Level(
        concurrency=concurrency,
        pairs=len(latencies),
        errors=errors[0],
        seconds=seconds,
        pairs_per_s=len(latencies) / seconds if seconds else 0.0,
        p50_ms=statistics.median(ms) if ms else float("nan"),
        p90_ms=_percentile(ms, 0.90),
        p99_ms=_percentile(ms, 0.99),
        mean_batch=d_images / d_batches if d_batches else 0.0,
        mean_queue_ms=(after[2] - before[2]) / d_images if d_images else 0.0,
        images_embedded=d_images,
    )


def sweep(
    client: ImgsimClient,
    images: list[bytes],
    levels: list[int],
    duration_s: float = 10.0,
    max_pairs: int | None = None,
    unary: bool = False,
    cache_hits: bool = False,
    model: str = "",
    inflight: int = 4,
) -> list[Level]:
    """Every concurrency level in turn, on one warmed channel."""
    client.warm_up()
    pairs = _Pairs(images, unique=not cache_hits, model=model)
    return [run_level(client, pairs, c, duration_s, max_pairs, unary, inflight) for c in levels]


def format_table(levels: list[Level]) -> str:
    head = (
        f"{'concurrency':>11} {'pairs/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'mean batch':>10} {'queue ms':>9} {'pairs':>7} {'errors':>6}"
    )
    rows = [
        f"{lv.concurrency:>11} {lv.pairs_per_s:>9.1f} {lv.p50_ms:>8.1f} {lv.p90_ms:>8.1f} "
        f"{lv.p99_ms:>8.1f} {lv.mean_batch:>10.2f} {lv.mean_queue_ms:>9.2f} {lv.pairs:>7} "
        f"{lv.errors:>6}"
        for lv in levels
    ]
    return "\n".join([head, *rows])


def write(levels: list[Level], path: Path) -> None:
    """JSON, or CSV when the name ends in .csv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [asdict(lv) for lv in levels]
    if path.suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)
    else:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({"levels": records}, indent=2) + "\n")
        os.replace(tmp, path)
