"""One command on a folder with no server named: the client starts a private `imgsim-server` (a
real child process on a unix socket), uses it and stops it, whatever way the command ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from imgsim_client import local
from imgsim_client.cli import main
from imgsim_client.cli._common import DEFAULT_SERVER

pytestmark = pytest.mark.skipif(
    local.answers(DEFAULT_SERVER),
    reason=f"something listens at {DEFAULT_SERVER}: the client would use it, not a local server",
)


def _local_servers(parent: int | None = None) -> list[int]:
    """Pids of private local servers (children of `parent`, when given) still running."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if b"--exit-with-stdin" in cmdline and (parent is None or ppid == parent):
            out.append(int(proc.name))
    return out


def _folder_with_copies(photos: dict[str, Path], folder: Path, n: int = 4) -> set[frozenset]:
    """Shipped photos and an edited copy of each (smaller, recompressed, brighter): the pairs
    dedup must find."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = set()
    for name in sorted(photos)[:n]:
        img = Image.open(photos[name]).convert("RGB")
        img.save(folder / f"{name}.png")
        copy = img.resize((img.width * 2 // 3, img.height * 2 // 3)).point(
            lambda v: min(255, v + 12)
        )
        copy.save(folder / f"{name}_copy.jpg", quality=70)
        truth.add(frozenset((f"{name}.png", f"{name}_copy.jpg")))
    return truth


def _pairs(csv_path: Path) -> set[frozenset]:
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    return {frozenset((Path(r["image_a"]).name, Path(r["image_b"]).name)) for r in rows}


def test_dedup_on_a_folder_with_no_server_starts_and_stops_its_own(photos, tmp_path, capsys):
    truth = _folder_with_copies(photos, tmp_path / "library")
    out = tmp_path / "dups.csv"
    assert main(["dedup", str(tmp_path / "library"), "-o", str(out), "--no-progress"]) == 0
    assert _pairs(out) == truth
    err = capsys.readouterr().err
    assert "starting a private local imgsim-server" in err and "imgsim-server --port" in err
    assert _local_servers(os.getpid()) == []  # stopped with the command
    assert not [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("imgsim-local-*")
                if p.stat().st_uid == os.getuid() and (p / "server.log").exists()
                and p.stat().st_mtime > time.time() - 60]  # fmt: skip


def test_a_killed_client_takes_its_local_server_with_it(photos, tmp_path):
    folder = tmp_path / "library"
    _folder_with_copies(photos, folder, n=len(photos))
    client = subprocess.Popen(
        [sys.executable, "-m", "imgsim_client", "embed", str(folder), "-o",
         str(tmp_path / "v.parquet"), "--no-progress", "--model", "efficientnet-lite2-260"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (children := _local_servers(client.pid)) and time.monotonic() < deadline:
        assert client.poll() is None, "the client ended before its server started"
        time.sleep(0.1)
    assert children, "no local server was started"
    client.send_signal(signal.SIGKILL)
    client.wait()
    deadline = time.monotonic() + 5
    while _local_servers() and any(Path(f"/proc/{p}").exists() for p in children):
        assert time.monotonic() < deadline, "the local server outlived its killed client"
        time.sleep(0.1)


def test_no_local_server_fails_as_before(photos, tmp_path, capsys):
    _folder_with_copies(photos, tmp_path / "library", n=1)
    argv = ["dedup", str(tmp_path / "library"), "-o", str(tmp_path / "d.csv"), "--no-progress"]
    assert main([*argv, "--no-local-server", "--connect-timeout", "1"]) == 1
    assert f"no imgsim server answered at {DEFAULT_SERVER}" in capsys.readouterr().err
    assert _local_servers(os.getpid()) == []


def test_without_the_server_extra_the_message_names_both_ways(
    photos, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(local, "server_installed", lambda: False)
    _folder_with_copies(photos, tmp_path / "library", n=1)
    argv = ["dedup", str(tmp_path / "library"), "-o", str(tmp_path / "d.csv"), "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "imgsim-server --port" in err and 'pip install "imgsim[server]"' in err


def test_library_calls_without_an_address_use_a_local_server(photos, tmp_path):
    import imgsim_client

    truth = _folder_with_copies(photos, tmp_path / "library")
    result = imgsim_client.dedup([tmp_path / "library"])  # no client, no address
    assert {
        frozenset((Path(p.image_a).name, Path(p.image_b).name)) for p in result.found.pairs
    } == truth
    assert _local_servers(os.getpid()) == []
    with imgsim_client.local_server() as client:  # one server across calls
        vectors = imgsim_client.embed([tmp_path / "library"], client)
        again = imgsim_client.dedup([tmp_path / "library"], client)
        assert len(_local_servers(os.getpid())) == 1
    assert len(vectors.keys) == 2 * len(truth) and again.found.pairs == result.found.pairs
    assert _local_servers(os.getpid()) == []
