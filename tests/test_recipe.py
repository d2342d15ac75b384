"""The few-shot recipe (detector/recipe.py): the epoch budget, augmentations that keep a good part good, and a
training run with both, on real bottle images (small)."""

import numpy as np
import pytest
import torch

from linewatch.contracts.settings import Settings
from linewatch.detector.datasets import open_dataset
from linewatch.detector.model_files import epochs_trained
from linewatch.detector.recipe import augment_batch, augmentation, describe_budget, epoch_budget
from linewatch.detector.training import TrainConfig, train

from datasets import bottle


def test_epoch_budget_raises_epochs_only_for_few_images():
    # 6 windows in batches of 32: one step an epoch, so 120 steps need 120 epochs
    assert epoch_budget(20, 120, 6, 32, fine_tune=False) == 120
    # 26 windows: still one step an epoch
    assert epoch_budget(20, 120, 26, 32, fine_tune=False) == 120
    # bottle's 167 training images: 6 steps an epoch, 20 epochs are 120 steps, so the default stands
    assert epoch_budget(20, 120, 167, 32, fine_tune=False) == 20
    # Magnetic Tile's 571: 18 steps an epoch
    assert epoch_budget(20, 120, 571, 32, fine_tune=False) == 20
    assert epoch_budget(20, 121, 167, 32, fine_tune=False) == 21
    assert epoch_budget(20, 0, 6, 32, fine_tune=False) == 20  # off
    assert epoch_budget(5, 120, 6, 32, fine_tune=True) == 5  # a fine-tune keeps its epochs
    with pytest.raises(ValueError, match="at least one window"):
        epoch_budget(20, 120, 0, 32, fine_tune=False)


def test_the_settings_recipe_counts_steps_and_an_epoch_count_that_was_set_is_trained_as_set(monkeypatch, tmp_path):
    from linewatch.cli.options import with_values

    config = TrainConfig.from_settings(Settings())
    assert (config.augment, config.augment_flips, config.augment_rot90, config.min_steps) == (False, False, False, 360)
    assert epoch_budget(20, 360, 167, 32, fine_tune=False) == 60  # MVTec bottle's training goods
    assert epoch_budget(20, 360, 571, 32, fine_tune=False) == 20  # Magnetic Tile's: as before
    assert TrainConfig().min_steps == 0  # the dataclass: every number explicit
    few = TrainConfig.from_settings(Settings(training={"augment": True, "augment_flips": True, "min_steps": 120}))
    assert (few.augment, few.augment_flips, few.augment_rot90, few.min_steps) == (True, True, False, 120)
    # an epoch count set anywhere is trained as set, unless min_steps is set too
    assert TrainConfig.from_settings(Settings(training={"epochs": 5})).min_steps == 0
    assert TrainConfig.from_settings(Settings(), epochs=5).min_steps == 0  # `up --epochs`, a fine-tune
    assert TrainConfig.from_settings(Settings(training={"epochs": 5, "min_steps": 120})).min_steps == 120
    assert TrainConfig.from_settings(with_values(Settings(), "training", epochs=3)).min_steps == 0  # --epochs 3
    forced = with_values(Settings(), "training", allow_under_calibrated=True)  # `train --force`: a default stays one
    assert forced.training.model_fields_set == {"allow_under_calibrated"}
    assert TrainConfig.from_settings(forced).min_steps == 360
    config_file = tmp_path / "linewatch.toml"
    config_file.write_text("[training]\nepochs = 5\n")
    monkeypatch.setenv("LINEWATCH_CONFIG", str(config_file))
    assert (TrainConfig.from_settings(Settings()).epochs, TrainConfig.from_settings(Settings()).min_steps) == (5, 0)
    config_file.write_text("[training]\nmin_steps = 120\n")
    assert TrainConfig.from_settings(Settings()).min_steps == 120
    assert TrainConfig.from_settings(Settings(), epochs=3).min_steps == 0  # a command line beats the file
    monkeypatch.delenv("LINEWATCH_CONFIG")
    monkeypatch.setenv("LINEWATCH_TRAINING__EPOCHS", "40")
    assert (TrainConfig.from_settings(Settings()).epochs, TrainConfig.from_settings(Settings()).min_steps) == (40, 0)
    with pytest.raises(ValueError, match="min_steps"):
        Settings(training={"min_steps": -1})


def test_photometric_jitter_and_translation_stay_small():
    torch.manual_seed(0)
    aug = augmentation(64, flips=False, rot90=False)
    flat = torch.full((40, 3, 64, 64), 100, dtype=torch.uint8)
    out = augment_batch(aug, flat)
    assert out.dtype == torch.uint8 and out.shape == flat.shape
    per_window = out.float().mean(dim=(1, 2, 3))
    # brightness in [0.95, 1.05] (uint8 truncation after each of the two steps: a grey level more); contrast blends
    # towards the window's own grey mean, so a flat window stays flat
    assert per_window.min() >= 94 and per_window.max() <= 105
    assert int((out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3))).max()) <= 1
    assert len(set(per_window.round().tolist())) > 3  # each window draws its own factor

    # a vertical edge at column 32 moves by at most 2 px (1/32 of 64) and never turns into its mirror image
    edge = torch.zeros((40, 3, 64, 64), dtype=torch.uint8)
    edge[..., :, 32:] = 200
    moved = augment_batch(aug, edge).float().mean(dim=(1, 2))  # (40, 64) column profile
    assert (moved[:, :30] < 20).all() and (moved[:, 34:] > 180).all()


def test_flips_and_quarter_turns_only_when_allowed():
    torch.manual_seed(0)
    left_bright = torch.zeros((60, 3, 64, 64), dtype=torch.uint8)
    left_bright[..., :, :32] = 200

    def brighter_left(out: torch.Tensor) -> np.ndarray:
        f = out.float()
        return (f[..., :, :32].mean(dim=(1, 2, 3)) > f[..., :, 32:].mean(dim=(1, 2, 3))).numpy()

    assert brighter_left(augment_batch(augmentation(64, flips=False, rot90=False), left_bright)).all()
    flipped = brighter_left(augment_batch(augmentation(64, flips=True, rot90=False), left_bright))
    assert 10 < flipped.sum() < 50  # about half are mirrored left-right
    turned = augment_batch(augmentation(64, flips=False, rot90=True), left_bright).float()
    top_bright = (turned[..., :32, :].mean(dim=(1, 2, 3)) > turned[..., 32:, :].mean(dim=(1, 2, 3))).numpy()
    assert 5 < top_bright.sum() < 30  # a quarter turn puts the bright half on top about a quarter of the time


def test_few_shot_training_records_its_recipe(tmp_path):
    ds = open_dataset(bottle())
    config = TrainConfig(image_size=64, epochs=2, batch_size=32, seed=3, device="cpu", allow_under_calibrated=True,
                         augment=True, min_steps=6)
    result = train(ds.train[:8], tmp_path / "m", config, progress=False)
    few = result.metadata["training"]["few_shot"]
    # 8 images: 2 held out, 6 trained on in one batch, so 6 steps need 6 epochs
    assert few["epoch_budget"] == {"epochs_asked": 2, "min_steps": 6, "training_windows": 6, "steps_per_epoch": 1,
                                   "epochs": 6, "steps": 6}
    assert few["augmentation"] == {"translate": 1 / 32, "brightness": 0.05, "contrast": 0.05, "flips": False,
                                   "rot90": False}
    assert len(result.history) == 6 and result.history[-1].epochs == 6
    assert result.metadata["training"]["epochs"] == 2 and result.metadata["training"]["augment"] is True
    assert epochs_trained(result.metadata) == 6
    before_budget = {"training": {k: v for k, v in result.metadata["training"].items() if k != "few_shot"}}
    assert epochs_trained(before_budget) == 2  # a model from before the budget was recorded: the epochs asked
    assert describe_budget(2, 6) == "at least 2 epochs and 6 SGD steps" and describe_budget(2, 0) == "2 epochs"
    # the drift reference is of the plain images, all 8 of them
    assert result.metadata["frame_statistics"]["images"] == 8
    again = train(ds.train[:8], tmp_path / "again", config, progress=False)
    assert again.metadata["weights_sha256"] == result.metadata["weights_sha256"]  # augmentation is seeded
