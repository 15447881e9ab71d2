"""End-to-end checks of the core service over a real loopback server."""

from __future__ import annotations

import io
import json

import grpc
import pytest
from PIL import Image

from imgsim_client import ImgsimClient, ImgsimError, PairRequest
from tests.conftest import jpeg_bytes

CLASSICAL = ("pixels", "color-hist", "phash")


def test_image_against_itself_scores_one(client, photos):
    data = photos["chelsea"].read_bytes()
    assert client.compare(data, data) >= 0.999


def test_resized_jpeg_copy_beats_different_photo(client, photos):
    original = photos["chelsea"].read_bytes()
    img = Image.open(photos["chelsea"])
    small = jpeg_bytes(img.resize((img.width // 2, img.height // 2)), quality=70)
    other = photos["coffee"].read_bytes()
    same = client.compare(original, small)
    different = client.compare(original, other)
    assert same > different
    assert same > 0.9, same


def test_stream_returns_one_response_per_pair(client, photos):
    files = [p.read_bytes() for p in list(photos.values())[:12]]
    pairs = [
        PairRequest(f"pair-{i}", files[i % len(files)], files[(i * 7 + 3) % len(files)])
        for i in range(120)
    ]
    results = list(client.compare_stream(iter(pairs)))
    assert sorted(r.pair_id for r in results) == sorted(p.pair_id for p in pairs)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    by_id = {r.pair_id: r.score for r in results}
    # pairs whose two indices coincide are self-pairs
    for i in range(120):
        if i % len(files) == (i * 7 + 3) % len(files):
            assert by_id[f"pair-{i}"] >= 0.999


def test_list_models_lists_registry(client):
    from imgsim_server.embedders import list_models

    resp = client.list_models()
    names = [m.name for m in resp.models]
    assert names == [m.name for m in list_models()]
    assert resp.default_model == "efficientnet-lite0"
    info = {m.name: m for m in resp.models}
    assert info["efficientnet-lite0"].weights_available
    assert info["efficientnet-lite0"].embedding_dim == 1280
    assert {info[n].kind for n in CLASSICAL} == {"classical"}
    assert info["phash"].similarity == "hamming"


@pytest.mark.parametrize("model", CLASSICAL)
def test_every_classical_baseline_can_be_selected(client, photos, model):
    a = photos["astronaut"].read_bytes()
    a_copy = jpeg_bytes(Image.open(photos["astronaut"]), quality=60)
    b = photos["rocket"].read_bytes()
    assert client.compare(a, a, model=model) == pytest.approx(1.0, abs=1e-5)
    assert client.compare(a, a_copy, model=model) > client.compare(a, b, model=model)
    results = list(client.compare_stream([PairRequest("x", a, b, model=model)]))
    assert results[0].ok and results[0].model == model


def test_unknown_model_is_not_found(client, photos):
    data = photos["coffee"].read_bytes()
    with pytest.raises(ImgsimError) as err:
        client.compare(data, data, model="no-such-model")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in err.value.message
    [res] = client.compare_stream([PairRequest("p", data, data, model="no-such-model")])
    assert res.error_code == grpc.StatusCode.NOT_FOUND


def test_missing_weights_name_the_file(client, photos, tmp_path, server):
    data = photos["coffee"].read_bytes()
    missing = [m for m in client.list_models().models if not m.weights_available]
    if not missing:
        pytest.skip("every backbone's weights are present on this machine")
    with pytest.raises(ImgsimError) as err:
        client.compare(data, data, model=missing[0].name)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "looked for" in err.value.message and ".pth" in err.value.message


def test_bad_image_fails_only_its_pair(client, photos):
    good = photos["coffee"].read_bytes()
    with pytest.raises(ImgsimError) as err:
        client.compare(good, b"definitely not an image")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    pairs = [
        PairRequest("ok1", good, good),
        PairRequest("bad", good, b"\x00" * 100),
        PairRequest("empty", b"", good),
        PairRequest("ok2", good, good),
    ]
    results = {r.pair_id: r for r in client.compare_stream(pairs)}
    assert set(results) == {"ok1", "bad", "empty", "ok2"}
    assert results["ok1"].ok and results["ok2"].ok
    assert results["bad"].error_code == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in results["empty"].error


def test_exif_orientation_is_applied(client, photos):
    img = Image.open(photos["chelsea"]).convert("RGB")
    upright = jpeg_bytes(img, 95)
    # Pixels stored rotated 90° counter-clockwise, with EXIF orientation 6 ("rotate 90° CW to
    # display"): decoding must undo the rotation.
    rotated = img.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    rotated.save(buf, "JPEG", quality=95, exif=exif)
    assert client.compare(upright, buf.getvalue()) >= 0.99
    # Control: the same pixels without the tag really do look different to the model.
    assert client.compare(upright, jpeg_bytes(rotated, 95)) < 0.95


def test_model_names_are_resolved_once_not_per_pair(client, photos, monkeypatch):
    """After a model is loaded, a request's model name costs one dict lookup: the registry is
    not asked again for each pair (it used to be asked four times per pair)."""
    import imgsim_server.core.engines as core_module
    from imgsim_server.embedders import _registry

    calls = []

    def counting(name):
        calls.append(name)
        return _registry.get_cfg(name)

    monkeypatch.setattr(core_module, "get_cfg", counting)
    monkeypatch.setattr(_registry, "get_cfg", counting)
    files = [p.read_bytes() for p in list(photos.values())[:6]]
    pairs = [PairRequest(str(i), files[i % 6], files[(i + 1) % 6]) for i in range(40)]
    pairs += [
        PairRequest(f"m{i}", files[i], files[i + 1], model="efficientnet-lite0") for i in range(4)
    ]
    assert all(r.ok for r in client.compare_stream(pairs))
    client.compare(files[0], files[1])
    assert len(calls) <= 1, calls  # at most the first use of the explicit name


def test_batch_policy_is_logged_when_a_model_loads(caplog):
    from imgsim_server.config import CoreConfig
    from imgsim_server.core.dataplane import Dataplane
    from tests.conftest import TEST_MODEL

    core = Dataplane(CoreConfig(TEST_MODEL, max_batch_size=32, max_delay_ms=5))
    try:
        with caplog.at_level("INFO", logger="imgsim_server.core"):
            core.engines.get("")
    finally:
        core.close()
    text = caplog.text
    assert f"loaded model {TEST_MODEL} in" in text
    assert "batch policy: close at 4 (runtime default), cap 32, wait up to 5 ms" in text


def test_the_default_model_serves_with_its_verdict(photos):
    """A server with the product's defaults loads the model the study chose, and Compare names
    the verdict of its calibrated thresholds."""
    from imgsim_server.config import DEFAULT_MODEL, ServerConfig
    from imgsim_server.server import start_server

    running = start_server(ServerConfig(host="127.0.0.1", port=0))
    try:
        with ImgsimClient(f"127.0.0.1:{running.port}", timeout=120) as c:
            resp = c.list_models()
            assert resp.default_model == DEFAULT_MODEL
            info = {m.name: m for m in resp.models}[DEFAULT_MODEL]
            assert {t.task for t in info.thresholds} == {
                "near-duplicate",
                "same object",
                "same category",
            }
            cat = photos["chelsea"].read_bytes()
            score, model, verdict = c.compare_pair(cat, cat)
            assert (model, verdict) == (DEFAULT_MODEL, "near-duplicate") and score > 0.999
            # Streams carry the same verdict (CompareResponse.verdict).
            [streamed] = c.compare_stream([PairRequest("p", cat, cat)])
            assert (streamed.model, streamed.verdict) == (DEFAULT_MODEL, "near-duplicate")
            score, _, verdict = c.compare_pair(cat, photos["rocket"].read_bytes())
            assert verdict == "different" and score < 0.5
    finally:
        running.stop(0)


def test_the_model_list_is_built_once_until_a_model_loads():
    import asyncio

    from imgsim_server.config import CoreConfig
    from imgsim_server.core.dataplane import Dataplane

    core = Dataplane(CoreConfig(default_model="phash"))
    try:
        first = asyncio.run(core.list_models())
        assert asyncio.run(core.list_models()) is first  # cached: no manifest reads per call
        assert not any(m.loaded for m in first.models)
        core.engines.get("pixels")
        again = asyncio.run(core.list_models())
        assert again is not first and [m.name for m in again.models if m.loaded] == ["pixels"]
    finally:
        core.close()


def test_models_table_sizes_its_columns_and_reports_states(client, address, capsys):
    from imgsim_client.cli import main

    assert main(["models", "--server", address]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0], [ln for ln in lines[1:] if ln.startswith("efficientnet-")]
    longest = max(len(m.name) for m in client.list_models().models)
    assert header.index("kind") > longest  # the longest name never runs into the next column
    for row in rows:  # every row's columns start where the header's do
        name = row.split()[0]
        assert row[header.index("kind") - 2 : header.index("kind")] == "  ", row
        state = row[header.index("state") :].split()[0]
        assert state == client.list_models().get(name).state
    assert any(r.split()[0] == "efficientnet-lite0" and " ready " in r for r in rows)
    assert main(["models", "--server", address, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {m["state"] for m in listed["models"]} <= {"ready", "preparing", "failed", "idle"}


def test_the_cli_and_the_client_wait_as_long_for_ready():
    from imgsim_client import _channel
    from imgsim_client.cli import _common

    assert _common.READY_TIMEOUT == _channel.READY_TIMEOUT
