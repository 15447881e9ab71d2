"""Collections against a real loopback server: embed, index, search, dedup."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsim_client import ImgsimClient
from imgsim_client.cli import main
from imgsim_client.photos.index import VectorIndex
from imgsim_client.photos.vectors import read_parquet

NAMES = ("chelsea", "coffee", "astronaut", "rocket", "camera", "grace_hopper")


@pytest.fixture()
def folder(tmp_path, photos):
    """Six photos (256 px JPEGs) in a folder tree, and a corrupt file among them."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i, name in enumerate(NAMES):
        img = Image.open(photos[name]).convert("RGB")
        img.thumbnail((256, 256))
        img.save(root / ("sub" if i % 2 else "") / f"{name}.jpg", quality=90)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def client_listing(address: str):
    with ImgsimClient(address, timeout=30) as client:
        return client.list_models()


def test_embed_vectors_are_the_ones_behind_compare(folder, address, tmp_path):
    out = tmp_path / "vectors.parquet"
    argv = ["embed", str(folder), "-o", str(out), "--server", address, "--no-progress"]
    assert main(argv) == 3  # finished, one image failed
    vectors = read_parquet(out)
    assert vectors.model == client_listing(address).collection_model  # collections' default
    assert len(vectors.keys) == len(NAMES) and vectors.matrix.shape == (len(NAMES), 1280)
    assert list(vectors.errors) == [str(folder / "broken.jpg")]
    assert "INVALID_ARGUMENT" in vectors.errors[str(folder / "broken.jpg")]
    assert np.allclose(np.linalg.norm(vectors.matrix, axis=1), 1.0, atol=1e-5)
    by_path = dict(zip(vectors.keys, vectors.matrix, strict=True))
    a, b = sorted(by_path)[:2]
    with ImgsimClient(address, timeout=30) as client:
        score = client.compare(Path(a).read_bytes(), Path(b).read_bytes(), vectors.model)
    assert abs(float(by_path[a] @ by_path[b]) - score) < 1e-5
    # --resume keeps what is there and embeds nothing again.
    argv += ["--resume"]
    assert main(argv) == 3


def test_search_finds_each_image_first(folder, address, tmp_path):
    vectors = tmp_path / "vectors.parquet"
    main(["embed", str(folder), "-o", str(vectors), "--server", address, "--no-progress"])
    assert main(["index", str(vectors), "-o", str(tmp_path / "idx")]) == 0
    hits = tmp_path / "hits.csv"
    queries = [str(p) for p in sorted(folder.rglob("*.jpg")) if p.name != "broken.jpg"]
    argv = ["search", str(tmp_path / "idx"), *queries, "-k", "3", "-o", str(hits)]
    assert main([*argv, "--server", address, "--no-progress"]) == 0
    rows = list(csv.DictReader(hits.open()))
    assert len(rows) == 3 * len(queries)
    for q in queries:
        first = next(r for r in rows if r["query"] == q and r["rank"] == "1")
        # With the default database-side augmentation, an image's stored vector leans towards
        # its neighbours: itself is still first, a little under 1.
        assert first["path"] == q and float(first["score"]) > 0.95


def test_dedup_groups_edited_copies(address, photos, tmp_path, capsys):
    """Three photos with two edited copies each (JPEG quality 30, half size), three unrelated
    photos and a corrupt file: dedup pairs each original with its copies, groups each family,
    pairs nothing else, and reports the corrupt file."""
    folder = tmp_path / "collection"
    folder.mkdir()
    originals = ("chelsea", "coffee", "rocket")
    for name in (*originals, "astronaut", "camera", "grace_hopper"):
        img = Image.open(photos[name]).convert("RGB")
        img.thumbnail((512, 512))
        img.save(folder / f"{name}.jpg", quality=95)
        if name in originals:
            img.save(folder / f"{name}_q30.jpg", quality=30)
            img.resize((img.width // 2, img.height // 2)).save(folder / f"{name}_half.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "dups.csv"
    argv = ["dedup", str(folder), "-o", str(out), "--server", address, "--no-progress"]
    assert main(argv) == 3  # the broken file failed; everything else was compared
    rows = list(csv.DictReader(out.open()))

    def family(path: str) -> str:
        return Path(path).stem.removesuffix("_q30").removesuffix("_half")

    assert all(family(r["image_a"]) == family(r["image_b"]) for r in rows), rows
    group_of = {}
    for r in rows:
        group_of[r["image_a"]] = group_of[r["image_b"]] = r["group"]
    assert {family(p) for p in group_of} == set(originals)  # no distractor was paired
    for name in originals:  # each original and both its copies, in one group
        members = [str(folder / f"{name}{edit}.jpg") for edit in ("", "_q30", "_half")]
        assert all(m in group_of for m in members), (name, sorted(group_of))
        assert len({group_of[m] for m in members}) == 1
    assert len(set(group_of.values())) == len(originals)
    err = capsys.readouterr().err
    assert "exact range search: every pair" in err and "broken.jpg" in err


def test_index_approximate_above_the_exact_size(folder, address, tmp_path):
    """Past --exact-below the index is PCA + IVF with re-ranking; k-NN then finds the same
    nearest image for every query on this tiny set, and the parameters are recorded."""
    vectors_path = tmp_path / "vectors.parquet"
    main(["embed", str(folder), "-o", str(vectors_path), "--server", address, "--no-progress"])
    vectors = read_parquet(vectors_path)
    rng = np.random.default_rng(0)
    noisy = vectors.matrix[rng.integers(0, len(vectors.keys), 3000)]
    noisy = noisy + rng.normal(0, 0.05, noisy.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    big = type(vectors)(
        vectors.keys + [f"n{i}" for i in range(len(noisy))],
        np.vstack([vectors.matrix, noisy]),
        vectors.model,
        vectors.similarity,
    )
    index = VectorIndex.build(big, exact_below=1000, pca=32)
    assert index.params.kind == "approximate" and index.params.factory.endswith(",RFlat")
    _, ids = index.search(vectors.matrix, 1)
    assert list(ids[:, 0]) == list(range(len(vectors.keys)))
    index.save(tmp_path / "approx")
    assert VectorIndex.load(tmp_path / "approx").params == index.params


def test_self_join_past_the_exact_size_finds_the_exact_pairs():
    """Past --exact-below, find_duplicates self-joins with index.self_knn (exact scores
    inside the probed lists, no index built): 2,000 originals with 2 noisy copies each give
    the same pairs and scores as the exact range search."""
    from imgsim_client.photos.dedup import find_duplicates
    from imgsim_client.photos.vectors import Vectors

    rng = np.random.default_rng(0)
    originals = _unit(rng.normal(size=(2000, 256)).astype(np.float32))
    copies = [_unit(originals + rng.normal(0, 0.01, originals.shape).astype(np.float32))
              for _ in range(2)]  # fmt: skip
    x = np.vstack([originals, *copies])
    vectors = Vectors([f"v{i}" for i in range(len(x))], x, "m", "cosine")
    approx = find_duplicates(vectors, 0.9, k=10, exact_below=1000)
    exact = find_duplicates(vectors, 0.9, k=10, exact_below=10_000)
    assert not approx.exact and exact.exact and approx.capped == 0
    got = {(p.image_a, p.image_b): p.score for p in approx.pairs}
    want = {(p.image_a, p.image_b): p.score for p in exact.pairs}
    assert len(want) == 3 * 2000  # each original's family: 3 pairs
    assert set(got) == set(want)
    assert max(abs(got[p] - want[p]) for p in got) < 1e-4
    assert approx.groups == exact.groups == 2000


def _embedded(folder: Path, address: str, tmp_path: Path):
    vectors = tmp_path / "vectors.parquet"
    main(["embed", str(folder), "-o", str(vectors), "--server", address, "--no-progress"])
    return read_parquet(vectors)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_dba_and_query_expansion_are_what_they_say(folder, address, tmp_path):
    """alpha-DBA and alpha-QE, checked against a brute-force reading of their definitions on
    real embeddings; both are recorded in index.json."""
    vectors = _embedded(folder, address, tmp_path)
    x = vectors.matrix
    sims = x @ x.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :3]  # itself and its 2 neighbours
    w = np.take_along_axis(sims, top, 1).clip(0) ** 3.0
    expected = _unit(np.einsum("nk,nkd->nd", w, x[top]))
    index = VectorIndex.build(vectors, dba_k=2, dba_alpha=3.0, qe_k=2, qe_alpha=3.0)
    assert np.allclose(index.stored(), expected, atol=1e-5)
    plain = VectorIndex.build(vectors)
    assert not np.allclose(plain.stored(), expected, atol=1e-3)  # it changed the vectors
    q = x[:1]
    s1 = q @ expected.T
    first = np.argsort(-s1[0], kind="stable")[:2]
    wq = s1[0, first].clip(0) ** 3.0
    qe = _unit(q[0] + wq @ expected[first])
    want = np.argsort(-(qe @ expected.T), kind="stable")
    _, ids = index.query(q, len(x))
    assert list(ids[0]) == list(want)
    index.save(tmp_path / "idx")
    recorded = VectorIndex.load(tmp_path / "idx").params
    assert (recorded.dba_k, recorded.dba_alpha, recorded.qe_k, recorded.qe_alpha) == (
        2,
        3.0,
        2,
        3.0,
    )


def test_search_matches_turned_and_mirrored_copies_with_rotations(folder, address, tmp_path):
    """A query stored turned by 90 degrees, or mirrored, finds its original with the rotation
    option (the version that undoes it is the original's pixels); upright only, it scores far
    lower."""
    vectors = _embedded(folder, address, tmp_path)
    main(["index", str(tmp_path / "vectors.parquet"), "-o", str(tmp_path / "idx")])
    original = folder / "chelsea.jpg"
    img = Image.open(original).convert("RGB")
    img.rotate(90, expand=True).save(tmp_path / "turned.png")
    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "mirrored.png")
    scores = {}
    for rotations in ("1", "8"):
        hits = tmp_path / f"hits{rotations}.csv"
        argv = ["search", str(tmp_path / "idx"), str(tmp_path / "turned.png"),
                str(tmp_path / "mirrored.png"), "-k", "1", "--rotations", rotations,
                "-o", str(hits), "--server", address, "--no-progress"]  # fmt: skip
        assert main(argv) == 0
        for row in csv.DictReader(hits.open()):
            scores[(Path(row["query"]).stem, rotations)] = (row["path"], float(row["score"]))
    assert vectors.keys  # the index holds the originals
    for query in ("turned", "mirrored"):
        path, score = scores[(query, "8")]
        assert path == str(original) and score > 0.97, (query, score)
    assert scores[("turned", "1")][1] < scores[("turned", "8")][1] - 0.1


@pytest.mark.parametrize("fmt,ext", [("HEIF", ".heic"), ("AVIF", ".avif")])
def test_phone_formats_score_as_the_same_picture(client, photos, tmp_path, fmt, ext):
    """A HEIC and an AVIF file made here (quality 90) decode on the server, EXIF orientation
    applied, and score >= 0.99 against the same picture as PNG; the folder scan lists them."""
    import io

    from PIL import features

    from imgsim_client.photos.files import list_images

    if fmt == "HEIF":
        pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is not installed")
        pillow_heif.register_heif_opener()
    elif not features.check("avif"):
        pytest.skip("this Pillow has no AVIF")
    img = Image.open(photos["chelsea"]).convert("RGB")
    png, phone = io.BytesIO(), io.BytesIO()
    img.save(png, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: the viewer turns it 90 degrees clockwise
    img.rotate(90, expand=True).save(phone, fmt, quality=90, exif=exif.tobytes())
    assert client.compare(png.getvalue(), phone.getvalue()) >= 0.99
    (tmp_path / f"chelsea{ext}").write_bytes(phone.getvalue())
    assert list_images([tmp_path]) == [str(tmp_path / f"chelsea{ext}")]


def test_library_api_returns_typed_records_and_checks_bounds():
    import imgsim_client
    from imgsim_client import DuplicatePair, Vectors, find_duplicates

    x = _unit(np.array([[1, 0, 0], [0.99, 0.1, 0], [0, 1, 0]], np.float32))
    found = find_duplicates(Vectors(["a", "b", "c"], x, "m", "cosine"), min_similarity=0.9)
    assert found.pairs == [DuplicatePair("a", "b", pytest.approx(float(x[0] @ x[1])), 0)]
    with pytest.raises(ValueError, match="outside"):
        find_duplicates(Vectors(["a"], x[:1], "m", "cosine"), min_similarity=1.5)
    assert {"search", "match_against", "verify_duplicates"} <= set(imgsim_client.__all__)


def test_search_of_a_missing_index_names_it(tmp_path, capsys):
    missing = tmp_path / "no-such.index"
    query = tmp_path / "q.png"
    query.write_bytes(b"not read: the index is checked first")
    assert main(["search", str(missing), str(query), "--no-local-server"]) == 2
    err = capsys.readouterr().err
    assert f"no index at {missing}" in err and "Traceback" not in err
