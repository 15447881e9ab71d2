"""`make soak`: many concurrent streams with bad inputs mixed in, against one server process.

Phases, all against the same `imgsim-server` child (default model, a small cache so that the
model really works):
1. N streams x M pairs at once (default 16 x 500), about 2% bad inputs of every kind, half the
   streams sending bytes with every pair and half sending each image once with refs; plus two
   streams cancelled part-way. Every sent pair must be answered exactly once; bad pairs fail with
   INVALID_ARGUMENT, the others are scored.
2. A client that stops reading its answers: server RSS before and after.
3. SIGTERM: the server must exit 0.
4. The attacks of the reliability review, at once (`attacks.py`).
Prints the figures and writes results/soak.md and results/soak.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from imgsim.v1 import similarity_pb2_grpc as pb_grpc
from PIL import Image

from imgsim_client._convert import pair_request
from imgsim_client.client import ImgsimClient, ImgsimError, PairRequest
from imgsim_datasets.photos import shipped_photos
from imgsim_lab import attacks
from imgsim_lab._paths import RESULTS
from imgsim_lab.bench import photo_pool
from imgsim_lab.faults import bad_inputs
from imgsim_lab.servers import ServerProcess


@dataclass
class StreamResult:
    sent: int = 0
    answered: int = 0
    duplicates: int = 0
    unknown: int = 0
    good_failed: list[str] = field(default_factory=list)
    bad_scored: list[str] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)  # (bad kind, status code) -> count
    stream_error: str = ""


def build_stream(
    k: int, n: int, pool: list[bytes], bad: dict[str, bytes], bad_rate: float, send_once: bool
) -> tuple[list[PairRequest], dict[str, str]]:
    """Pairs of stream k and the kind of each bad pair ('' for good ones)."""
    rng = random.Random(k)
    pairs, kinds = [], {}
    sent_ids: set[int] = set()
    for i in range(n):
        pid = f"s{k}-{i}"
        ia, ib = rng.randrange(len(pool)), rng.randrange(len(pool))
        if rng.random() < bad_rate:
            kind = rng.choice([*bad, "unknown ref"])
            kinds[pid] = kind
            if kind == "unknown ref":
                pairs.append(PairRequest(pid, pool[ia], ref_b="never-sent"))
            else:
                pairs.append(PairRequest(pid, pool[ia], bad[kind]))
            continue
        if not send_once:
            pairs.append(PairRequest(pid, pool[ia], pool[ib]))
            continue
        sides = []
        for idx in (ia, ib):
            if idx in sent_ids:
                sides.append({"ref": str(idx)})
            else:
                sent_ids.add(idx)
                sides.append({"data": pool[idx], "id": str(idx)})
        a, b = sides
        pairs.append(
            PairRequest(
                pid,
                a.get("data"),
                b.get("data"),
                a.get("ref", ""),
                b.get("ref", ""),
                a.get("id", ""),
                b.get("id", ""),
            )
        )
    return pairs, kinds


def run_stream(address: str, pairs: list[PairRequest], kinds: dict[str, str]) -> StreamResult:
    out = StreamResult()
    seen: set[str] = set()
    ids = {p.pair_id for p in pairs}

    def counted():
        for p in pairs:
            out.sent += 1
            yield p

    try:
        with ImgsimClient(address, timeout=60) as client:
            for res in client.compare_stream(counted(), idle_timeout=120):
                out.answered += 1
                if res.pair_id in seen:
                    out.duplicates += 1
                seen.add(res.pair_id)
                if res.pair_id not in ids:
                    out.unknown += 1
                kind = kinds.get(res.pair_id, "")
                if kind:
                    if res.ok:
                        out.bad_scored.append(res.pair_id)
                    else:
                        out.errors[(kind, res.error_code.name)] += 1
                elif not res.ok:
                    out.good_failed.append(f"{res.pair_id}: {res.error_code.name} {res.error}")
    except ImgsimError as exc:
        out.stream_error = str(exc)
    return out


def cancelled_stream(address: str, pairs: list[PairRequest], after: int) -> int:
    """Read `after` answers, then cancel; returns the answers read."""
    with grpc.insecure_channel(address) as channel:
        call = pb_grpc.ImageSimilarityStub(channel).CompareStream(
            (pair_request(p) for p in pairs), timeout=300
        )
        got = 0
        for _ in call:
            got += 1
            if got >= after:
                call.cancel()
                break
    return got


def non_reading_client(address: str, image: bytes, n: int, seconds: float) -> dict:
    """A client that sends n ref pairs and reads nothing for `seconds` (small transport window,
    as on a congested link); returns how far the server got before it stopped reading."""
    stats_client = ImgsimClient(address, timeout=30)
    scored0 = stats_client.stats().pairs_scored
    first = pair_request(PairRequest("0", image, image, id_a="x", id_b="x"))
    rest = (pair_request(PairRequest(str(i), ref_a="x", ref_b="x")) for i in range(1, n))
    with grpc.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        call = pb_grpc.ImageSimilarityStub(channel).CompareStream(
            itertools.chain([first], rest), timeout=600
        )
        time.sleep(seconds)
        answered_unread = stats_client.stats().pairs_scored - scored0
        got = sum(1 for _ in call)
    stats_client.close()
    return {"pairs": n, "answered_while_unread": answered_unread, "read_afterwards": got}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=16)
    p.add_argument("--pairs", type=int, default=500, help="pairs per stream")
    p.add_argument("--bad-rate", type=float, default=0.02)
    p.add_argument("--pool", type=int, default=1000, help="distinct real photos drawn from")
    p.add_argument("--cache-mb", type=float, default=2.0, help="server cache (small: real work)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--budget-mb", type=int, default=1024, help="the attacked server's budget")
    p.add_argument("--slow", type=int, default=5000, help="slow HTTP connections")
    p.add_argument("--only-attacks", action="store_true", help="skip the stream phases")
    args = p.parse_args(argv)
    if args.only_attacks:
        work = Path(args.out) / "cache" / "soak"
        work.mkdir(parents=True, exist_ok=True)
        found = attacks.run(work, args.budget_mb, slow=args.slow)
        print(json.dumps(found, indent=2))
        print(attacks.render(found))
        return 0 if found["passed"] else 1

    work = Path(args.out) / "cache" / "soak"
    work.mkdir(parents=True, exist_ok=True)
    files, pool_desc = photo_pool(args.pool, work)
    pool = [f.read_bytes() for f in files]
    bad = {k: v for k, (v, _) in bad_inputs(Image.open(shipped_photos()[0])).items()}
    streams = [
        build_stream(k, args.pairs, pool, bad, args.bad_rate, send_once=k % 2 == 1)
        for k in range(args.streams)
    ]
    extra = [build_stream(100 + k, args.pairs, pool, bad, 0.0, send_once=False) for k in range(2)]

    flags = ("--cache-mb", str(args.cache_mb))
    started = time.perf_counter()
    with ServerProcess(*flags) as srv:
        with ImgsimClient(srv.address, timeout=60) as c:
            c.wait_ready(60)
            c.compare(pool[0], pool[1])  # load the model before the clock starts
        rss_idle = srv.peak_rss_mb()
        results: list[StreamResult] = [StreamResult() for _ in streams]
        cancelled_got = [0, 0]

        def worker(i: int) -> None:
            results[i] = run_stream(srv.address, *streams[i])

        def canceller(i: int) -> None:
            cancelled_got[i] = cancelled_stream(srv.address, extra[i][0], after=50 + 100 * i)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(streams))]
        threads += [threading.Thread(target=canceller, args=(i,)) for i in range(2)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        soak_s = time.perf_counter() - t0
        with ImgsimClient(srv.address, timeout=60) as c:
            stats = c.stats()
        rss_soak = srv.peak_rss_mb()
        alive_after_soak = srv.proc.poll() is None

        slow = non_reading_client(srv.address, pool[0], 100_000, seconds=8.0)
        rss_slow = srv.peak_rss_mb()
        srv.proc.send_signal(signal.SIGTERM)
        exit_code = srv.proc.wait(60)
    total_s = time.perf_counter() - started

    sent = sum(r.sent for r in results)
    answered = sum(r.answered for r in results)
    errors: Counter = Counter()
    for r in results:
        errors.update(r.errors)
    bad_sent = sum(len(k) for _, k in streams)
    report = {
        "streams": args.streams,
        "pairs_per_stream": args.pairs,
        "pool": pool_desc,
        "bad_rate": args.bad_rate,
        "pairs_sent": sent,
        "pairs_answered": answered,
        "bad_pairs_sent": bad_sent,
        "duplicates": sum(r.duplicates for r in results),
        "unknown_ids": sum(r.unknown for r in results),
        "good_pairs_failed": [g for r in results for g in r.good_failed][:20],
        "bad_pairs_scored": [b for r in results for b in r.bad_scored][:20],
        "stream_errors": [r.stream_error for r in results if r.stream_error],
        "errors_by_kind": {f"{kind} -> {code}": n for (kind, code), n in sorted(errors.items())},
        "cancelled_streams_read": cancelled_got,
        "server": {
            "images_embedded": sum(m.images_embedded for m in stats.models),
            "mean_batch_size": [round(m.mean_batch_size, 2) for m in stats.models],
            "images_cancelled": stats.images_cancelled,
            "cache_hits": stats.cache_hits,
            "pairs_scored": stats.pairs_scored,
            "pairs_failed": stats.pairs_failed,
        },
        "soak_seconds": round(soak_s, 1),
        "pairs_per_s": round(answered / soak_s, 1),
        "rss_mb": {
            "idle": round(rss_idle),
            "peak_after_soak": round(rss_soak),
            "peak_after_non_reading_client": round(rss_slow),
        },
        "non_reading_client": slow,
        "server_alive_after_soak": alive_after_soak,
        "server_exit_code_on_sigterm": exit_code,
        "server_crashes": int(not alive_after_soak) + int(exit_code != 0),
        "total_seconds": round(total_s, 1),
    }
    report["attacks"] = attacks.run(work, args.budget_mb, slow=args.slow)
    ok = (
        sent == answered == args.streams * args.pairs
        and not report["duplicates"]
        and not report["unknown_ids"]
        and not report["good_pairs_failed"]
        and not report["bad_pairs_scored"]
        and not report["stream_errors"]
        and report["server_crashes"] == 0
        and sum(errors.values()) == bad_sent
        and report["attacks"]["passed"]
    )
    report["verdict"] = "PASS" if ok else "FAIL"
    out = Path(args.out)
    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "soak.md").write_text(render(report))
    print(render(report))
    return 0 if ok else 1


def render(r: dict) -> str:
    rss = r["rss_mb"]
    slow = r["non_reading_client"]
    lines = [
        "# Soak: concurrent streams with bad inputs (`make soak`)",
        "",
        f"Verdict: **{r['verdict']}**. {r['streams']} concurrent streams x "
        f"{r['pairs_per_stream']} pairs, {r['bad_rate']:.0%} bad inputs, images from "
        f"{r['pool']}; half the streams send each image once (refs), half with every pair. "
        "Two more streams are cancelled part-way. Server: one `imgsim-server` process, default "
        "model, a small embedding cache so that the model really works.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| pairs sent | {r['pairs_sent']} |",
        f"| pairs answered | {r['pairs_answered']} |",
        f"| duplicate / unknown answers | {r['duplicates']} / {r['unknown_ids']} |",
        f"| bad pairs sent / failed as expected | {r['bad_pairs_sent']} / "
        f"{sum(r['errors_by_kind'].values())} |",
        f"| good pairs that failed | {len(r['good_pairs_failed'])} |",
        f"| streams that failed | {len(r['stream_errors'])} |",
        f"| server crashes | {r['server_crashes']} |",
        f"| soak duration | {r['soak_seconds']} s ({r['pairs_per_s']} pairs/s) |",
        f"| images embedded / mean batch | {r['server']['images_embedded']} / "
        f"{r['server']['mean_batch_size']} |",
        f"| images dropped for cancelled streams | {r['server']['images_cancelled']} |",
        f"| server RSS: idle / peak after soak | {rss['idle']} / {rss['peak_after_soak']} MiB |",
        f"| server exit code on SIGTERM | {r['server_exit_code_on_sigterm']} |",
        f"| whole run | {r['total_seconds']} s |",
        "",
        "## Errors by kind",
        "",
        "| bad input -> status | pairs |",
        "|---|---|",
        *[f"| {k} | {n} |" for k, n in r["errors_by_kind"].items()],
        "",
        "## A client that stops reading",
        "",
        f"It sends {slow['pairs']} pairs (refs to one image) and reads nothing for 8 s. The "
        f"server answered {slow['answered_while_unread']} of them, then stopped reading the "
        "stream (its window is released only when an answer is handed to gRPC); reading again "
        f"gave all {slow['read_afterwards']}. Server peak RSS: {rss['peak_after_soak']} MiB "
        f"before, {rss['peak_after_non_reading_client']} MiB after.",
        "",
        attacks.render(r["attacks"]),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
