"""The face model through a real server: ORL photos (../shared/data/orl_faces, its README's label
rule: the folder is the person), shipped photos without a face, gRPC, HTTP and the CLI. Skips
cleanly without the [faces] extra or without ORL."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from imgsim_client import ImageRequest, ImgsimError, PairRequest

pytest.importorskip(
    "dlib", reason='the [faces] extra is not installed (pip install "imgsim[faces]")'
)
pytest.importorskip("face_recognition_models", reason="the [faces] extra is not installed")
ORL = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl_faces"
needs_orl = pytest.mark.skipif(not ORL.is_dir(), reason=f"no ORL faces at {ORL}")
PEOPLE, PHOTOS = 8, 5  # 40 photos: every pair of them, quick enough for the suite


def orl_subset() -> list[Path]:
    return [ORL / f"s{p}" / f"{i}.png" for p in range(1, PEOPLE + 1) for i in range(1, PHOTOS + 1)]


def person(path: Path | str) -> str:
    return Path(path).parent.name  # the README's rule


@needs_orl
def test_face_tells_people_apart_on_orl(client):
    files = orl_subset()
    results = {
        r.image_id: r
        for r in client.embed_stream(
            [ImageRequest(str(i), p.read_bytes(), model="face") for i, p in enumerate(files)]
        )
    }
    assert all(r.ok and r.faces for r in results.values()), [r.error for r in results.values()]
    vec = np.array([results[str(i)].faces[0].vector for i in range(len(files))])
    iu = np.triu_indices(len(files), 1)
    same = np.array([[person(a) == person(b) for b in files] for a in files])[iu]
    assert roc_auc_score(same, (vec @ vec.T)[iu]) >= 0.99
    box = results["0"].faces[0].box
    assert 0 <= box.left < box.right <= 92 and 0 <= box.top < box.bottom <= 112


@needs_orl
def test_compare_says_same_person_with_the_boxes_that_matched(client):
    a, b, c = (ORL / "s1" / "1.png", ORL / "s1" / "2.png", ORL / "s2" / "1.png")
    same = client.compare_faces(a.read_bytes(), b.read_bytes())
    other = client.compare_faces(a.read_bytes(), c.read_bytes())
    assert same.verdict == "same person" and other.verdict == "different"
    assert 0 <= other.score < same.score <= 1
    assert same.face_a.right > same.face_a.left and same.face_b.bottom > same.face_b.top
    assert client.compare_pair(a.read_bytes(), b.read_bytes(), model="face").score == same.score


@needs_orl
def test_a_photo_without_a_face_fails_only_its_own_pair(client, photos):
    face = (ORL / "s3" / "1.png").read_bytes()
    rocket = photos["rocket"].read_bytes()  # scikit-image's rocket: no face in it
    pairs = [
        PairRequest("ok-1", face, (ORL / "s3" / "2.png").read_bytes(), model="face"),
        PairRequest("no-face", face, rocket, model="face"),
        PairRequest("ok-2", face, (ORL / "s4" / "1.png").read_bytes(), model="face"),
    ]
    results = {r.pair_id: r for r in client.compare_stream(pairs)}
    assert results["ok-1"].ok and results["ok-2"].ok
    assert results["ok-1"].face_a is not None
    bad = results["no-face"]
    assert bad.score is None and bad.error_code == grpc.StatusCode.FAILED_PRECONDITION
    assert bad.error == "image_b: no face found"
    with pytest.raises(ImgsimError) as err:
        client.compare_faces(rocket, face)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.message == "image_a: no face found"


@needs_orl
def test_http_gives_the_boxes_and_422_for_no_face(extra_servers, photos):
    import httpx

    running = extra_servers(http_port=0)
    url = f"http://127.0.0.1:{running.http_port}"
    a, b = (ORL / "s5" / "1.png").read_bytes(), (ORL / "s5" / "2.png").read_bytes()
    r = httpx.post(f"{url}/v1/compare", files={"image_a": a, "image_b": b}, data={"model": "face"})
    assert r.status_code == 200 and r.json()["verdict"] == "same person"
    assert set(r.json()["face_a"]) == {"left", "top", "right", "bottom"}
    rocket = photos["rocket"].read_bytes()
    r = httpx.post(
        f"{url}/v1/compare", files={"image_a": a, "image_b": rocket}, data={"model": "face"}
    )
    assert r.status_code == 422
    assert r.json()["error"] == {"code": "FAILED_PRECONDITION", "message": "image_b: no face found"}
    r = httpx.post(f"{url}/v1/embed", files={"image": a}, data={"model": "face"})
    assert r.status_code == 200 and len(r.json()["faces"][0]["vector"]) == 128


@needs_orl
def test_cli_embeds_a_row_per_face_and_searches_for_a_person(address, tmp_path):
    from imgsim_client.cli import main
    from imgsim_client.photos.vectors import read_parquet

    files = orl_subset()
    listing = tmp_path / "faces.txt"
    listing.write_text("\n".join(str(p) for p in files) + "\n")
    vectors = tmp_path / "faces.parquet"
    common = ["--server", address, "--no-progress"]
    assert main(["embed", str(listing), "--model", "face", "-o", str(vectors), *common]) == 0
    stored = read_parquet(vectors)
    assert stored.model == "face" and len(stored.boxes) == len(stored.keys) == len(files)
    assert main(["index", str(vectors), "-o", str(tmp_path / "idx")]) == 0
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(str(ORL / f"s{p}" / "1.png") for p in range(1, PEOPLE + 1)))
    hits = tmp_path / "hits.csv"
    k = PHOTOS  # the query itself, then the other photos of that person
    search = ["search", str(tmp_path / "idx"), str(queries), "-k", str(k), "-o", str(hits)]
    assert main([*search, *common]) == 0
    rows = list(csv.DictReader(hits.open()))
    by_query: dict[str, list[str]] = {}
    for row in rows:
        by_query.setdefault(row["query"], []).append(row["path"])
    precision = [
        sum(person(p) == person(q) for p in found if p != q) / (PHOTOS - 1)
        for q, found in by_query.items()
    ]
    assert len(precision) == PEOPLE and np.mean(precision) >= 0.9


def test_without_the_extra_the_face_model_names_its_pip_command(monkeypatch):
    from imgsim_server.embedders import create
    from imgsim_server.errors import ConfigurationError

    monkeypatch.setitem(sys.modules, "dlib", None)  # as if dlib were not installed
    with pytest.raises(ConfigurationError, match=r'pip install "imgsim\[faces\]"'):
        create("face")
