"""Photo libraries against a real loopback server: a growing index (`index add`, `index info`),
dedup against a reference, and acting on groups (--keep, --to-remove, --move-to and its undo,
the --html gallery in a real browser)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from imgsim_client.cli import main
from imgsim_client.photos.index import RAW_VECTORS
from imgsim_client.photos.vectors import read_parquet


def _jpeg(src: Path, dest: Path, side: int = 320, quality: int = 90) -> Path:
    img = Image.open(src).convert("RGB")
    img.thumbnail((side, side))
    dest.parent.mkdir(parents=True, exist_ok=True)
    img.save(dest, "JPEG", quality=quality)
    return dest


def _embedded(capsys) -> str:
    return capsys.readouterr().err


def _vectors_index(address, folder: Path, tmp_path: Path) -> Path:
    vectors, index = tmp_path / "v.parquet", tmp_path / "idx"
    run = ["--server", address, "--no-progress"]
    assert main(["embed", str(folder), "-o", str(vectors), *run]) == 0
    assert main(["index", str(vectors), "-o", str(index)]) == 0
    return index


def test_index_add_embeds_only_new_and_changed_images(address, photos, tmp_path, capsys):
    lib = tmp_path / "lib"
    for name in ("chelsea", "coffee", "rocket"):
        _jpeg(photos[name], lib / f"{name}.jpg")
    index = _vectors_index(address, lib, tmp_path)
    assert (index / RAW_VECTORS).is_file()
    before = read_parquet(index / RAW_VECTORS)
    assert len(before.digests) == 3  # embed recorded each file's sha256
    # One new image, one changed (another picture under the same name), one unchanged.
    _jpeg(photos["astronaut"], lib / "astronaut.jpg")
    _jpeg(photos["camera"], lib / "coffee.jpg")
    capsys.readouterr()
    run = ["--server", address, "--no-progress"]
    assert main(["index", "add", str(index), str(lib / "astronaut.jpg"), str(lib / "coffee.jpg"),
                 str(lib / "rocket.jpg"), *run]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "added 1 new and 1 changed image(s) (1 unchanged, 0 failed)" in err, err
    after = read_parquet(index / RAW_VECTORS)
    assert sorted(Path(k).name for k in after.keys) == [
        "astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]  # fmt: skip
    old = dict(zip(before.keys, before.matrix, strict=True))
    new = dict(zip(after.keys, after.matrix, strict=True))
    coffee, rocket = str(lib / "coffee.jpg"), str(lib / "rocket.jpg")
    assert float(old[coffee] @ new[coffee]) < 0.9  # the changed file was embedded again
    assert float(old[rocket] @ new[rocket]) > 0.9999  # the unchanged one was kept
    assert json.loads((index / "keys.json").read_text()) == after.keys
    # search after add: the new image finds itself first
    hits = tmp_path / "hits.csv"
    assert main(["search", str(index), str(lib / "astronaut.jpg"), "-k", "2", "-o", str(hits),
                 *run]) == 0  # fmt: skip
    first = next(r for r in csv.DictReader(hits.open()) if r["rank"] == "1")
    assert first["path"] == str(lib / "astronaut.jpg")
    # a second add of the same files embeds nothing
    assert main(["index", "add", str(index), str(lib), *run]) == 0
    assert "added 0 new and 0 changed image(s) (4 unchanged" in capsys.readouterr().err
    assert main(["index", "info", str(index), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 4 and info["kind"] == "exact" and info["model"] == after.model
    assert info["dba_k"] >= 0 and info["stored_vectors"] is True


def test_index_add_refuses_another_model(address, photos, tmp_path, capsys):
    lib = tmp_path / "lib"
    _jpeg(photos["chelsea"], lib / "chelsea.jpg")
    index = _vectors_index(address, lib, tmp_path)
    capsys.readouterr()
    argv = ["index", "add", str(index), str(lib), "--server", address, "--no-progress"]
    assert main([*argv, "--model", "phash"]) == 2
    err = capsys.readouterr().err
    assert "holds vectors of" in err and "phash" in err, err


def test_interrupted_index_add_loses_nothing(address, photos, tmp_path, capsys, monkeypatch):
    """Killed in the middle (a checkpoint after every image, then Ctrl-C): the vectors
    written so far stay, and a second add embeds only the rest, every image once."""
    from imgsim_client.photos import embed

    lib = tmp_path / "lib"
    _jpeg(photos["chelsea"], lib / "chelsea.jpg")
    index = _vectors_index(address, lib, tmp_path)
    names = ("coffee", "rocket", "astronaut", "camera", "grace_hopper")
    for name in names:
        _jpeg(photos[name], lib / "new" / f"{name}.jpg")
    real = embed.embed_paths

    def interrupted(client, paths, model, progress, **kw):
        """Ctrl-C right after the second image's checkpoint (one after every image)."""
        calls, write = [0], kw["checkpoint"]

        def checkpoint(results):
            write(results)
            calls[0] += 1
            if calls[0] == 2:
                raise KeyboardInterrupt

        kw.update(checkpoint=checkpoint, checkpoint_s=0)
        return real(client, paths, model, progress, **kw)

    monkeypatch.setattr(embed, "embed_paths", interrupted)
    argv = ["index", "add", str(index), str(lib / "new"), "--server", address, "--no-progress"]
    assert main(argv) == 130  # interrupted
    kept = read_parquet(index / RAW_VECTORS)
    assert len(kept.keys) == 3  # chelsea and the two answered before the interrupt
    monkeypatch.setattr(embed, "embed_paths", real)
    capsys.readouterr()
    assert main(argv) == 0
    done = read_parquet(index / RAW_VECTORS)
    assert sorted(Path(k).stem for k in done.keys) == sorted(("chelsea", *names))
    assert len(set(done.keys)) == len(done.keys)
    err = capsys.readouterr().err
    assert f"added {len(names) - (len(kept.keys) - 1)} new" in err, err


def _edited_copy(src: Path, dest: Path) -> Path:
    img = Image.open(src).convert("RGB")
    w, h = img.size
    out = img.crop((0.1 * w, 0.1 * h, 0.85 * w, 0.9 * h)).resize((int(0.6 * w), int(0.6 * h)))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=40)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(buf.getvalue())
    return dest


def test_dedup_against_a_reference(address, photos, tmp_path, capsys):
    ref = tmp_path / "ref"
    for name in ("chelsea", "coffee", "rocket", "camera"):
        _jpeg(photos[name], ref / f"{name}.jpg", side=512)
    _jpeg(photos["camera"], ref / "camera_again.jpg", side=512, quality=60)  # a reference dup
    new = tmp_path / "new"
    _edited_copy(ref / "chelsea.jpg", new / "chelsea_edit.jpg")
    _jpeg(photos["astronaut"], new / "astronaut.jpg")
    index = _vectors_index(address, ref, tmp_path)
    out = tmp_path / "matches.csv"
    run = ["--server", address, "--no-progress"]
    for against in (index, ref):  # an index folder, or the images themselves
        assert main(["dedup", str(new), "--against", str(against), "-o", str(out), *run]) == 0
        rows = list(csv.DictReader(out.open()))
        assert [(Path(r["image"]).name, Path(r["match"]).name) for r in rows] == [
            ("chelsea_edit.jpg", "chelsea.jpg")], rows  # fmt: skip
        assert rows[0]["inliers"] != ""  # verified
    # --to-remove against a reference: the new copy, never the reference
    rm = tmp_path / "remove.txt"
    argv = ["dedup", str(new), "--against", str(index), "-o", str(out), "--to-remove", str(rm)]
    assert main([*argv, *run]) == 0
    assert rm.read_text() == f"{new / 'chelsea_edit.jpg'}\n"
    # A reference file gone since it was indexed: its pair cannot be verified, and it says so.
    (ref / "chelsea.jpg").unlink()
    capsys.readouterr()
    assert main(["dedup", str(new), "--against", str(index), "-o", str(out), *run]) == 0
    assert list(csv.DictReader(out.open())) == []
    assert f"{ref / 'chelsea.jpg'}: cannot be read for verification" in capsys.readouterr().err


def _family_library(photos, root: Path) -> dict[str, list[Path]]:
    """Two families of the same picture in several sizes, and an unrelated photo."""
    fam = {}
    for name in ("chelsea", "coffee"):
        fam[name] = [
            _jpeg(photos[name], root / f"{name}_big.jpg", side=640),
            _jpeg(photos[name], root / "sub" / f"{name}_small.jpg", side=200),
            _jpeg(photos[name], root / f"{name}_mid.jpg", side=400, quality=60),
        ]
    _jpeg(photos["rocket"], root / "rocket.jpg")
    return fam


def test_keep_largest_and_move_to_with_undo(address, photos, tmp_path, capsys):
    lib = tmp_path / "lib"
    fam = _family_library(photos, lib)
    out, rm, moved = tmp_path / "d.csv", tmp_path / "rm.txt", tmp_path / "moved"
    run = ["--server", address, "--no-progress"]
    argv = ["dedup", str(lib), "-o", str(out), "--keep", "largest", "--to-remove", str(rm)]
    assert main([*argv, "--move-to", str(moved), *run]) == 0
    others = sorted(str(p) for files in fam.values() for p in files[1:])
    assert rm.read_text().splitlines() == others  # the largest of each family is kept
    for files in fam.values():
        assert files[0].is_file()  # kept
        for p in files[1:]:
            assert not p.exists()
            assert (moved / p.relative_to(lib)).is_file()  # relative path kept
    assert (lib / "rocket.jpg").is_file()
    manifest = json.loads((moved / "imgsim-moved.json").read_text())
    assert sorted(m["from"] for m in manifest["moves"]) == sorted(
        str(Path(p).resolve()) for p in others)  # fmt: skip
    capsys.readouterr()
    assert main(["undo-move", str(moved)]) == 0
    assert "restored 4 file(s); 0 could not go back" in capsys.readouterr().err
    for files in fam.values():
        assert all(p.is_file() for p in files)


def test_move_to_never_overwrites(tmp_path):
    from imgsim_client.photos.act import move_to

    (tmp_path / "lib").mkdir()
    a = tmp_path / "lib" / "a.jpg"
    a.write_bytes(b"a")
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "a.jpg").write_bytes(b"other")
    with pytest.raises(FileExistsError):
        move_to([str(a)], tmp_path / "moved")
    assert a.read_bytes() == b"a" and (tmp_path / "moved" / "a.jpg").read_bytes() == b"other"


def test_keep_policies(tmp_path):
    from imgsim_client.photos.act import keeper

    small, big = tmp_path / "b_small.png", tmp_path / "a_long_name_big.png"
    Image.new("RGB", (20, 20)).save(small)
    Image.new("RGB", (60, 40)).save(big)
    os.utime(big, (1_000_000, 1_000_000))
    paths = [str(small), str(big)]
    assert keeper(paths, "largest") == str(big)
    assert keeper(paths, "oldest") == str(big)
    assert keeper(paths, "first") == str(big)
    assert keeper(paths, "shortest-path") == str(small)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium")
def test_gallery_in_a_browser(address, photos, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    lib = tmp_path / "lib"
    fam = _family_library(photos, lib)
    gallery = tmp_path / "gallery"
    argv = ["dedup", str(lib), "-o", str(tmp_path / "d.csv"), "--html", str(gallery)]
    assert main([*argv, "--server", address, "--no-progress"]) == 0
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((gallery / "index.html").as_uri())
        page.wait_for_load_state("load")
        assert page.locator("section.group").count() == 2
        loaded = page.eval_on_selector_all(
            "img", "els => els.map(e => e.complete && e.naturalWidth > 0)"
        )
        assert len(loaded) == 6 and all(loaded)
        kept = page.locator("figure.keep figcaption").all_inner_texts()
        assert sorted(Path(t.split()[1]).name for t in kept) == [
            "chelsea_big.jpg", "coffee_big.jpg"]  # fmt: skip
        text = page.inner_text("body")
        assert "451x300" in text and "score 0." in text and " kB" in text  # chelsea_big
        browser.close()
    assert not errors, errors
    assert all(p.is_file() for files in fam.values() for p in files)  # review moves nothing


def test_to_remove_keeps_a_name_that_is_not_utf8(address, photos, tmp_path):
    """--to-remove lists each path as its bytes, a file name that is not valid UTF-8 too
    (written through the same atomic writer as the CSVs)."""
    lib = tmp_path / "lib"
    _jpeg(photos["chelsea"], lib / "big.jpg", side=640)
    odd = os.fsdecode(b"caf\xe9.jpg")
    _jpeg(photos["chelsea"], lib / odd, side=200)
    rm = tmp_path / "rm.txt"
    argv = ["dedup", str(lib), "-o", str(tmp_path / "d.csv"), "--to-remove", str(rm)]
    assert main([*argv, "--server", address, "--no-progress"]) == 0
    assert rm.read_bytes() == os.fsencode(str(lib / odd)) + b"\n"
