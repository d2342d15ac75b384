"""The teachers are real ImageNet networks, loaded offline, and stay frozen."""

import importlib.resources

import cv2
import numpy as np
import pytest
import timm
import torch
import torchvision

from linewatch.contracts.files import sha256_file
from linewatch.detector.backbones import (
    RESNET18_FILE,
    WeightsNotFoundError,
    backbone_spec,
    build_classifier,
    build_student,
    build_teacher,
)
from linewatch.detector.stpm import STPM

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
# scikit-image ships these photos; their ImageNet classes are unambiguous.
PHOTOS = {"coffee.png": {967}, "chelsea.png": CATS, "camera.png": {872}, "motorcycle_left.png": {665, 670}}


def _photo(name: str, spec) -> torch.Tensor:
    path = importlib.resources.files("skimage") / "data" / name
    rgb = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
    h, w = rgb.shape[:2]
    side = min(h, w)
    rgb = rgb[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    rgb = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255
    return (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)


@torch.no_grad()
def test_efficientnet_lite0_teacher_classifies_real_photos_like_imagenet_model():
    spec = backbone_spec("efficientnet_lite0")
    model = build_classifier("efficientnet_lite0", None)
    for name, classes in PHOTOS.items():
        top1 = int(model(_photo(name, spec)).argmax())
        assert top1 in classes, f"{name}: top-1 class {top1}, expected one of {sorted(classes)}"


@torch.no_grad()
def test_random_weights_do_not_pass_the_photo_check():
    # The control: the same check on an untrained network fails, so passing it means the weights are ImageNet's.
    spec = backbone_spec("efficientnet_lite0")
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", pretrained=False, **spec.timm_kwargs).eval()
    hits = sum(int(model(_photo(n, spec)).argmax()) in c for n, c in PHOTOS.items())
    assert hits <= 1


def test_teacher_stays_frozen_in_training_mode():
    teacher, path = build_teacher("efficientnet_lite0", None)
    assert path.name == "efficientnet-lite0-57934424.pth"
    model = STPM(backbone_spec("efficientnet_lite0"), teacher, build_student("efficientnet_lite0"), 0.0)
    model.train()
    assert not model.teacher.training
    assert model.student.training
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_resnet18_teacher_loads_torchvision_weights_from_the_hub_cache(tmp_path, monkeypatch):
    # No ResNet-18 ImageNet weights can be had offline: write a torchvision state dict where torch.hub looks.
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / RESNET18_FILE)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    teacher, path = build_teacher("resnet18", None)
    assert path == checkpoints / RESNET18_FILE
    assert len(sha256_file(path)) == 64
    assert torch.equal(teacher.body.layer3[1].bn2.running_var, reference.layer3[1].bn2.running_var)
    reference.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stem = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        layer1 = reference.layer1(stem)
        layer3 = reference.layer3(reference.layer2(layer1))
        features = teacher(x)
    assert torch.allclose(features[0], layer1, atol=1e-5)
    assert torch.allclose(features[2], layer3, atol=1e-5)


def test_resnet18_missing_weights_error_names_the_file_and_where(tmp_path):
    missing = tmp_path / "nowhere" / RESNET18_FILE
    with pytest.raises(WeightsNotFoundError) as err:
        build_teacher("resnet18", missing)
    message = str(err.value)
    assert RESNET18_FILE in message and str(missing) in message
    assert "LINEWATCH_BACKBONE__WEIGHTS" in message


def test_weights_of_another_architecture_are_refused(tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match="does not hold efficientnet_lite0 weights"):
        build_classifier("efficientnet_lite0", wrong)
