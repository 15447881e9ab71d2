"""Dynamic batching, the embedding cache, send-once references and out-of-order completion."""

from __future__ import annotations

import threading

import grpc
import pandas as pd
from PIL import Image

from imgsim_client import PairRequest
from imgsim_client.scoring import score_pairs
from tests.conftest import distinct_jpegs, jpeg_bytes


def _model_stats(client):
    return next(m for m in client.stats().models if m.model == "efficientnet-lite0")


def test_batches_larger_than_one_form_under_concurrent_load(client, photos):
    images = distinct_jpegs(photos, 48, salt=1)
    before = _model_stats(client)
    errors = []

    def worker(k: int) -> None:
        pairs = [
            PairRequest(f"{k}-{i}", images[(k * 12 + i) % 48], images[(k * 12 + i + 1) % 48])
            for i in range(12)
        ]
        results = list(client.compare_stream(pairs))
        errors.extend(r.error for r in results if not r.ok)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = _model_stats(client)
    assert not errors
    new_images = after.images_embedded - before.images_embedded
    new_batches = after.batches - before.batches
    assert new_images == 48  # each distinct image embedded exactly once
    assert new_images / new_batches > 1.0, (new_images, new_batches)
    assert after.max_batch_size_seen > 1


def test_repeated_image_is_a_cache_hit(client, photos):
    a, b = distinct_jpegs(photos, 2, salt=2)
    first = client.compare(a, b)
    stats = client.stats()
    second = client.compare(b, a)
    later = client.stats()
    assert later.cache_hits - stats.cache_hits == 2
    assert (
        _model_stats(client).images_embedded
        == next(m for m in stats.models if m.model == "efficientnet-lite0").images_embedded
    )
    assert abs(first - second) < 1e-6


def test_stream_with_references_scores_correctly(client, photos):
    cat, coffee = photos["chelsea"].read_bytes(), photos["coffee"].read_bytes()
    rocket = photos["rocket"].read_bytes()
    expected = {"x": client.compare(cat, coffee), "y": client.compare(coffee, rocket)}
    pairs = [
        PairRequest("x", cat, coffee, id_a="cat", id_b="coffee"),
        PairRequest("y", None, rocket, ref_a="coffee"),
        PairRequest("z", None, None, ref_a="cat", ref_b="cat"),
    ]
    got = {r.pair_id: r for r in client.compare_stream(pairs)}
    assert abs(got["x"].score - expected["x"]) < 1e-5
    assert abs(got["y"].score - expected["y"]) < 1e-5
    assert got["z"].score >= 0.999


def test_unknown_reference_fails_only_its_pair(client, photos):
    cat = photos["chelsea"].read_bytes()
    pairs = [
        PairRequest("a", cat, cat, id_a="c"),
        PairRequest("bad", None, cat, ref_a="nope"),
        PairRequest("b", None, cat, ref_a="c"),
    ]
    got = {r.pair_id: r for r in client.compare_stream(pairs)}
    assert got["a"].ok and got["b"].ok
    assert got["bad"].error_code == grpc.StatusCode.INVALID_ARGUMENT
    assert "nope" in got["bad"].error


def test_out_of_order_completion_keeps_csv_order(client, photos, tmp_path):
    # Row 0 needs a big, never-seen image decoded and embedded; rows 1.. are cache hits, so
    # their responses overtake it on the stream.
    big = Image.open(photos["astronaut"]).convert("RGB").resize((3000, 3000))
    (tmp_path / "big.jpg").write_bytes(jpeg_bytes(big, 90))
    cat = photos["chelsea"].read_bytes()
    client.compare(cat, cat)  # make the small image a cache hit
    (tmp_path / "cat.png").write_bytes(cat)
    rows = [("big.jpg", "cat.png")] + [("cat.png", "cat.png")] * 20
    csv = tmp_path / "pairs.csv"
    pd.DataFrame(rows, columns=["image_a", "image_b"]).assign(n=range(21)).to_csv(csv, index=False)

    pairs = [
        PairRequest(str(i), (tmp_path / a).read_bytes(), (tmp_path / b).read_bytes())
        for i, (a, b) in enumerate(rows)
    ]
    arrival = [r.pair_id for r in client.compare_stream(pairs)]
    assert arrival != sorted(arrival, key=int), "expected the slow first pair to finish last"

    out = tmp_path / "scored.csv"
    big2 = Image.open(photos["coffee"]).convert("RGB").resize((3000, 3000))
    (tmp_path / "big.jpg").write_bytes(jpeg_bytes(big2, 90))  # new content, not cached
    score_pairs(client, csv, out, progress=False)
    df = pd.read_csv(out)
    assert list(df["n"]) == list(range(21))
    assert (df["score"][1:] >= 0.999).all() and df["score"][0] < 0.9
