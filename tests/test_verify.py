"""Geometric verification (`compare --verify`) against a real server: an edited copy is
accepted, another photo of the same object is not, over gRPC, HTTP and the CLI."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

import imgsim_verify as verify
from imgsim_client.cli import main
from imgsim_lab._paths import SHARED

pytest.importorskip("cv2", reason="the [verify] extra (OpenCV) is not installed")


def _edited(path: Path) -> bytes:
    """A crop to 60%, turned by 8 degrees, with a text overlay, as JPEG quality 25."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    out = img.crop((0.15 * w, 0.2 * h, 0.75 * w, 0.8 * h)).rotate(8, expand=True)
    ImageDraw.Draw(out).text((10, 10), "COPY 2026", fill=(255, 0, 0))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=25)
    return buf.getvalue()


def test_an_edited_copy_is_verified(client, photos):
    original = photos["chelsea"]
    result = client.compare_verified(original.read_bytes(), _edited(original))
    assert result.verified and result.inliers >= verify.MIN_INLIERS, result
    assert result.verification == verify.YES
    unrelated = client.compare_verified(original.read_bytes(), photos["rocket"].read_bytes())
    assert not unrelated.verified and unrelated.inliers < 15, unrelated
    assert unrelated.verification == verify.NO


def test_another_view_of_the_same_object_is_not_a_copy(client):
    a, b = SHARED / "ukbench_sample/ukbench00008.jpg", SHARED / "ukbench_sample/ukbench00010.jpg"
    if not a.is_file():
        pytest.skip("ukbench_sample is absent")
    result = client.compare_verified(a.read_bytes(), b.read_bytes())
    assert not result.verified, result
    plain = client.compare_pair(a.read_bytes(), b.read_bytes())
    assert abs(plain.score - result.score) < 1e-6  # the score itself is unchanged


def test_verify_over_http_and_the_cli(extra_servers, photos, tmp_path, capsys):
    httpx = pytest.importorskip("httpx")
    running = extra_servers(http_port=0)
    original = photos["coffee"]
    files = {"image_a": original.read_bytes(), "image_b": _edited(original)}
    url = f"http://127.0.0.1:{running.http_port}/v1/compare"
    body = httpx.post(url + "?verify=true", files=files, timeout=60).json()
    assert body["verified"] is True and body["inliers"] >= verify.MIN_INLIERS, body
    assert "inliers" not in httpx.post(url, files=files, timeout=60).json()
    (tmp_path / "copy.jpg").write_bytes(_edited(original))
    argv = ["compare", str(original), str(tmp_path / "copy.jpg"), "--verify"]
    assert main([*argv, "--server", f"127.0.0.1:{running.port}"]) == 0
    out = capsys.readouterr().out
    assert "inliers: verified" in out, out


def test_dedup_verifies_its_candidates(address, photos, tmp_path, capsys):
    """dedup's default: candidates above the floor are verified on the client's files. An
    edited copy is kept with its inliers; another view of the same UKBench object is a
    candidate by its score (it is, with --no-verify) but not a copy, so verification drops it."""
    from imgsim_client.photos.dedup import verify_rule

    a, b = SHARED / "ukbench_sample/ukbench00008.jpg", SHARED / "ukbench_sample/ukbench00010.jpg"
    if not a.is_file():
        pytest.skip("ukbench_sample is absent")
    folder = tmp_path / "library"
    folder.mkdir()
    for name in ("chelsea", "rocket", "camera"):
        (folder / f"{name}.png").write_bytes(photos[name].read_bytes())
    (folder / "chelsea_copy.jpg").write_bytes(_edited(photos["chelsea"]))
    (folder / "view_a.jpg").write_bytes(a.read_bytes())
    (folder / "view_b.jpg").write_bytes(b.read_bytes())
    out = tmp_path / "dups.csv"
    argv = ["dedup", str(folder), "-o", str(out), "--server", address, "--no-progress"]
    # A low floor makes every pair here a candidate: verification alone decides.
    assert main([*argv, "--threshold", "0"]) == 0
    rows = {(Path(r["image_a"]).name, Path(r["image_b"]).name): r for r in _rows(out)}
    assert set(rows) == {("chelsea.png", "chelsea_copy.jpg")}, rows
    assert rows["chelsea.png", "chelsea_copy.jpg"]["verification"] == "yes"  # how it was kept
    model = client_model(address)
    rule = verify_rule(model)
    assert rule is not None, f"no measured dedup rule for the collection model {model}"
    assert int(rows["chelsea.png", "chelsea_copy.jpg"]["inliers"]) >= rule.min_inliers
    err = capsys.readouterr().err
    assert "verified 15 candidate(s)" in err, err  # all 6 * 5 / 2 pairs of the folder
    assert main([*argv, "--threshold", "0.3", "--no-verify"]) == 0
    pairs = {(Path(r["image_a"]).name, Path(r["image_b"]).name) for r in _rows(out)}
    assert ("view_a.jpg", "view_b.jpg") in pairs and len(pairs) > 1
    assert all(r["inliers"] == "" for r in _rows(out))
    assert "not verified" in capsys.readouterr().err


def test_dedup_without_opencv_names_the_extra(address, photos, tmp_path, capsys, monkeypatch):
    from imgsim_client.photos import dedup

    monkeypatch.setattr(dedup, "verification_available", lambda: False)
    folder = tmp_path / "library"
    folder.mkdir()
    (folder / "a.png").write_bytes(photos["chelsea"].read_bytes())
    argv = ["dedup", str(folder), "-o", str(tmp_path / "d.csv"), "--server", address]
    assert main([*argv, "--no-progress"]) == 2
    assert 'pip install "imgsim[verify]", or pass --no-verify' in capsys.readouterr().err
    assert not (tmp_path / "d.csv").exists()


def _rows(path: Path) -> list[dict]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


def client_model(address: str) -> str:
    from imgsim_client import ImgsimClient

    with ImgsimClient(address, timeout=30) as client:
        return client.list_models().collection_model


def test_dedup_verifies_a_heic_copy(address, photos, tmp_path):
    """The client reads HEIC files for verification too: an edited copy stored as HEIC is
    verified against its original, not dropped as unreadable. The client runs in its own
    process: here the in-process server has registered HEIC with Pillow already."""
    import subprocess
    import sys

    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is not installed")
    pillow_heif.register_heif_opener()
    folder = tmp_path / "library"
    folder.mkdir()
    (folder / "chelsea.png").write_bytes(photos["chelsea"].read_bytes())
    Image.open(io.BytesIO(_edited(photos["chelsea"]))).save(folder / "copy.heic", "HEIF")
    out = tmp_path / "dups.csv"
    argv = ["dedup", str(folder), "-o", str(out), "--server", address, "--no-progress"]
    run = subprocess.run(
        [sys.executable, "-m", "imgsim_client.cli", *argv],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = _rows(out)
    assert [(Path(r["image_a"]).name, Path(r["image_b"]).name) for r in rows] == [
        ("chelsea.png", "copy.heic")], run.stderr  # fmt: skip
    assert int(rows[0]["inliers"]) >= verify.MIN_INLIERS
    assert "cannot be read" not in run.stderr


def test_squashed_turned_and_mirrored_copies_are_verified(photos):
    """A copy squashed to a square (thumbnails, social sites) changes the aspect ratio, which no
    similarity transform fits; the affine fit with two scales does, turned and mirrored too."""
    from PIL import ImageOps

    original = Image.open(photos["chelsea"]).convert("RGB")  # 451 x 300: not square
    square = original.resize((256, 256))
    a = verify.features(original, mirror=False)
    for name, copy in {
        "squashed": square,
        "squashed, turned": square.rotate(90),
        "squashed, mirrored": ImageOps.mirror(square),
        "turned": original.rotate(270, expand=True),
    }.items():
        v = verify.match(a, verify.features(copy))
        assert v.answer == verify.YES and v.verified, (name, v)
    old = verify.match(a, verify.features(square), transform="similarity")
    assert old.inliers < verify.MIN_INLIERS  # why today's rule rejected squashed copies


def test_unrelated_photos_are_no_under_the_affine_fit_too(photos):
    names = ("chelsea", "rocket", "coffee", "astronaut", "camera")
    feats = {n: verify.features(Image.open(photos[n]).convert("RGB")) for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            v = verify.match(feats[a], feats[b])
            assert v.answer == verify.NO and v.inliers < verify.MIN_INLIERS, (a, b, v)


def _flat_logo() -> Image.Image:
    """A flat two-shape logo: a few SIFT features, like icons, clip art and drawings."""
    img = Image.new("RGB", (300, 200), "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 40, 160, 160), fill="#e63946")
    draw.rectangle((180, 80, 280, 120), fill="#1d3557")
    return img


def test_a_copy_too_plain_to_judge_is_cannot_tell_not_no():
    """No count of inliers is meaningful between images with a handful of features: today's
    rule answered no to every such copy (the inliers can never reach it)."""
    logo = _flat_logo()
    v = verify.match(verify.features(logo, mirror=False), verify.features(logo.resize((96, 96))))
    assert v.features < verify.MIN_FEATURES and v.inliers < verify.MIN_INLIERS, v
    assert v.answer == verify.CANNOT_TELL and not v.verified


def test_dedup_keeps_a_plain_copy_by_its_score_and_says_so(address, photos, tmp_path):
    folder = tmp_path / "graphics"
    folder.mkdir()
    _flat_logo().save(folder / "logo.png")
    _flat_logo().resize((96, 96)).save(folder / "logo_thumb.png")  # squashed and small
    (folder / "rocket.jpg").write_bytes(photos["rocket"].read_bytes())
    out = tmp_path / "dups.csv"
    assert main(["dedup", str(folder), "-o", str(out), "--server", address, "--no-progress"]) == 0
    rows = {(Path(r["image_a"]).name, Path(r["image_b"]).name): r for r in _rows(out)}
    assert set(rows) == {("logo.png", "logo_thumb.png")}, rows
    assert rows["logo.png", "logo_thumb.png"]["verification"] == verify.CANNOT_TELL
