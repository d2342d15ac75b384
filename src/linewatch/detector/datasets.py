"""Dataset layouts the detector reads as they are, from where they are (never copied).

* MVTec AD category: ``train/good/*``, ``test/<good|defect type>/*``, ``ground_truth/<type>/<stem>_mask.png``.
* Magnetic Tile Defect set: ``MT_*/Imgs/<name>.jpg`` with masks ``<name>.png`` and the fixed ``split.json``.
* A plain folder of good images (training only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .imaging import list_images


class DatasetError(ValueError):
    """A data folder that does not hold a dataset layout linewatch can read; the message says why."""


@dataclass(frozen=True)
class Sample:
    """One test image: its path, its label (``good`` or a defect type) and its mask file, if any.

    A defect image without a mask is labelled on image level only: it counts for image AUROC and the
    miss rate, and is left out of the pixel metrics (its defect pixels are unknown).
    """

    path: Path
    label: str
    mask: Path | None = None

    @property
    def is_defect(self) -> bool:
        return self.label != "good"

    @property
    def pixels_known(self) -> bool:
        """True when every pixel's label is known: a good image, or a defect image with its mask."""
        return not self.is_defect or self.mask is not None


@dataclass
class Dataset:
    """Good training images and labelled test images of one part type.

    ``layout`` is ``mvtec``, ``magnetic_tile`` or ``folder``; a mask pixel is defective when its 8-bit value
    is above ``mask_threshold``.
    """

    root: Path
    layout: str
    train: list[Path]
    test: list[Sample] = field(default_factory=list)
    mask_threshold: int = 127

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.label for s in self.test if s.is_defect})


def open_dataset(root: Path) -> Dataset:
    """Detect the layout of ``root`` and list its images.

    Raises:
        DatasetError: ``root`` is missing, empty, or a layout with parts missing (e.g. no ``train/good``,
            a defect image without its mask in a ``ground_truth/<type>/`` folder that holds masks), or an
            invalid ``split.json`` or one that names missing files.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory")
    if (root / "split.json").is_file():
        return _magnetic_tile(root)
    if (root / "train").is_dir() or (root / "test").is_dir():
        return _mvtec(root)
    images = list_images(root)
    if not images:
        raise DatasetError(
            f"{root}: no images found. Expected an MVTec AD category (train/good, test/, ground_truth/), "
            "the Magnetic Tile folder with split.json, or a folder of good images (.png, .jpg, ...)"
        )
    return Dataset(root=root, layout="folder", train=images)


def _mvtec(root: Path) -> Dataset:
    good = root / "train" / "good"
    if not good.is_dir():
        raise DatasetError(f"{root}: MVTec AD layout needs train/good/ with the defect-free training images")
    train = list_images(good)
    if not train:
        raise DatasetError(f"{good}: no training images")
    test: list[Sample] = []
    test_root = root / "test"
    if test_root.is_dir():
        for type_dir in sorted(p for p in test_root.iterdir() if p.is_dir()):
            label = type_dir.name
            masks = root / "ground_truth" / label
            for path in list_images(type_dir):
                mask = None
                # A defect type without a ground_truth/ folder is labelled on image level only.
                if label != "good" and masks.is_dir():
                    mask = masks / f"{path.stem}_mask.png"
                    if not mask.is_file():
                        raise DatasetError(f"{path}: defect image without its mask {mask} (without the folder "
                                           f"{masks}, this defect type is evaluated on image level only)")
                test.append(Sample(path, label, mask))
    return Dataset(root=root, layout="mvtec", train=train, test=test)


def _magnetic_tile(root: Path) -> Dataset:
    try:
        split = json.loads((root / "split.json").read_text())
        train = [root / p for p in split["train_good"]]
        test = [Sample(root / p, "good") for p in split["test_good"]]
        for label, paths in sorted(split["test_defect"].items()):
            name = label.removeprefix("MT_")
            test.extend(Sample(root / p, name, (root / p).with_suffix(".png")) for p in paths)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{root / 'split.json'}: not a valid split file ({exc!r})") from None
    missing = [str(p) for p in train + [s.path for s in test] if not p.is_file()]
    missing += [str(s.mask) for s in test if s.mask is not None and not s.mask.is_file()]
    if missing:
        raise DatasetError(f"{root}: {len(missing)} files named in split.json are missing, e.g. {missing[0]}")
    return Dataset(root=root, layout="magnetic_tile", train=train, test=test)
