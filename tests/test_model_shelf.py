"""A worker's models per product (detector/stream/model_shelf.py) with real models: loaded on announcement or on
first use, the least recently used evicted beyond the memory budget, a hot swap touching one product only."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

import pytest

from linewatch.contracts.messages import ModelAnnouncement
from linewatch.detector.model_files import WEIGHTS_FILE, read_metadata, save_model
from linewatch.detector.scoring import Scorer
from linewatch.detector.stream.model_shelf import LoadFailure, ModelShelf, model_bytes


def _version_of(model_dir: Path, out: Path, version: str, scale: float = 1.0) -> Path:
    """A copy of ``model_dir`` recorded as registry version ``version`` (weights scaled by ``scale``)."""
    from safetensors.torch import load_file

    state = {k: v * scale if v.is_floating_point() else v for k, v in load_file(str(model_dir / WEIGHTS_FILE)).items()}
    return save_model(out, state, {**read_metadata(model_dir), "version": version})


def _announcement(model_dir: Path, version: str, product: str) -> ModelAnnouncement:
    return ModelAnnouncement(version=version, artifact_uri=str(model_dir), activated_at=dt.datetime.now(dt.UTC),
                             product=product)


@pytest.fixture
def models(quick_model, tmp_path):
    dirs = {name: _version_of(quick_model.model_dir, tmp_path / name.replace("/", "-"), name, scale)
            for name, scale in (("bottle/v1", 1.0), ("tile/v1", 1.01), ("tile/v2", 1.02))}
    loads: list[str] = []

    def load(model_dir: Path) -> Scorer:
        loads.append(read_metadata(model_dir)["version"])
        return Scorer(model_dir, "cpu", runtime="torch")

    return dirs, loads, load


def test_a_budget_of_one_model_keeps_the_product_in_use_and_reloads_the_other(models):
    dirs, loads, load = models
    one = model_bytes(Scorer(dirs["bottle/v1"], "cpu", runtime="torch"))
    shelf = ModelShelf(load, budget_bytes=one + one // 2)  # room for one model, not two
    shelf.announce(_announcement(dirs["bottle/v1"], "bottle/v1", "bottle"))
    shelf.announce(_announcement(dirs["tile/v1"], "tile/v1", "tile"))  # does not fit: loaded on its first frame
    assert (loads, shelf.products) == (["bottle/v1"], ["bottle"])
    assert shelf.status()["tile"] == {"model_version": None, "device": None, "runtime": None,
                                      "registry_version": "tile/v1", "model_behind": None, "model_load_error": None}
    tile = shelf.slot_for("tile")
    assert tile.current.version == "tile/v1" and shelf.products == ["tile"] and shelf.evictions == 1
    assert shelf.slot_for("bottle").current.version == "bottle/v1"
    assert loads == ["bottle/v1", "tile/v1", "bottle/v1"] and shelf.products == ["bottle"]
    assert shelf.slot_for("bottle") is shelf.slot_for("bottle")  # held: no load
    assert len(loads) == 3
    assert "no active model" in shelf.slot_for("other")


def test_a_rollout_swaps_its_own_product_between_batches_only(models):
    dirs, loads, load = models
    shelf = ModelShelf(load, budget_bytes=2**40)
    shelf.announce(_announcement(dirs["bottle/v1"], "bottle/v1", "bottle"))
    shelf.announce(_announcement(dirs["tile/v1"], "tile/v1", "tile"))
    bottle, tile = shelf.slot_for("bottle"), shelf.slot_for("tile")
    assert loads == ["bottle/v1", "tile/v1"]
    shelf.announce(_announcement(dirs["tile/v2"], "tile/v2", "tile"))
    assert tile.current.version == "tile/v1"  # offered, not switched: the batch being scored keeps its model
    assert shelf.status()["tile"]["model_behind"] is None  # loaded and waiting for the next batch: not behind
    shelf.switch_all()
    assert (tile.current.version, bottle.current.version) == ("tile/v2", "bottle/v1")


def test_a_model_that_does_not_load_leaves_the_product_without_one_and_the_others_scoring(models, tmp_path):
    dirs, loads, load = models
    shelf = ModelShelf(load, budget_bytes=2**40)
    shelf.announce(_announcement(dirs["bottle/v1"], "bottle/v1", "bottle"))
    broken = _version_of(dirs["tile/v1"], tmp_path / "broken", "tile/v1")
    (broken / WEIGHTS_FILE).write_bytes((broken / WEIGHTS_FILE).read_bytes()[:1000])
    with pytest.raises(Exception, match="tile|SHA|weights"):
        shelf.announce(_announcement(broken, "tile/v1", "tile"))
    why = shelf.slot_for("tile")
    assert isinstance(why, str) and why.startswith("product 'tile': its model tile/v1: ")
    assert shelf.status()["tile"]["model_behind"] == "not loaded, registry says tile/v1"
    assert shelf.slot_for("bottle").current.version == "bottle/v1"
    # a version announced under another name than its files carry is refused, the product keeps its model
    with pytest.raises(Exception, match="holds model bottle/v1, not bottle/v2"):
        shelf.announce(_announcement(dirs["bottle/v1"], "bottle/v2", "bottle"))
    assert shelf.slot_for("bottle").current.version == "bottle/v1"
    assert shelf.status()["bottle"]["model_behind"] == "on bottle/v1, registry says bottle/v2"


def test_a_rollback_before_the_next_batch_drops_the_model_offered(models):
    dirs, loads, load = models
    shelf = ModelShelf(load, budget_bytes=2**40)
    shelf.announce(_announcement(dirs["tile/v1"], "tile/v1", "tile"))
    tile = shelf.slot_for("tile")
    shelf.announce(_announcement(dirs["tile/v2"], "tile/v2", "tile"))  # loaded, offered (an idle line)
    shelf.announce(_announcement(dirs["tile/v1"], "tile/v1", "tile"))  # rolled back before any batch
    shelf.switch_all()
    assert tile.current.version == "tile/v1" and shelf.status()["tile"]["model_behind"] is None


def test_a_model_no_frame_would_load_again_is_never_evicted(models):
    dirs, loads, load = models
    one = model_bytes(Scorer(dirs["bottle/v1"], "cpu", runtime="torch"))
    shelf = ModelShelf(load, budget_bytes=one + one // 2)
    shelf.install("default", load(dirs["bottle/v1"]))  # a --model directory: announced nowhere
    shelf.announce(_announcement(dirs["tile/v1"], "tile/v1", "tile"), preload=False)
    assert shelf.slot_for("tile").current.version == "tile/v1"
    assert shelf.products == ["default", "tile"] and shelf.evictions == 0  # over the budget, not unloaded
    assert shelf.slot_for("default").current.version == "bottle/v1"


def test_a_first_frame_load_overtaken_by_an_announcement_installs_the_newer_version(models):
    dirs, loads, load = models
    shelf = ModelShelf(lambda d: None, budget_bytes=2**40)

    def load_then_announce(model_dir):  # tile/v2 is activated while tile/v1 loads for a first frame
        scorer = load(model_dir)
        if scorer.version == "tile/v1":
            shelf.announce(_announcement(dirs["tile/v2"], "tile/v2", "tile"), preload=False)
        return scorer

    shelf.load = load_then_announce
    shelf.announce(_announcement(dirs["tile/v1"], "tile/v1", "tile"), preload=False)
    assert shelf.slot_for("tile").current.version == "tile/v2"
    assert loads == ["tile/v1", "tile/v2"]


def test_a_batch_interleaving_products_over_the_budget_loads_each_model_once(models):
    from linewatch.contracts.messages import FrameMeta
    from linewatch.contracts.product_settings import ProductSettings
    from linewatch.detector.stream.batches import RawFrame
    from linewatch.detector.stream.routing import ProductRouter, Routed

    dirs, loads, load = models
    one = model_bytes(Scorer(dirs["bottle/v1"], "cpu", runtime="torch"))
    shelf = ModelShelf(load, budget_bytes=one + one // 2)  # room for one model, not two
    shelf.announce(_announcement(dirs["bottle/v1"], "bottle/v1", "bottle"), preload=False)
    shelf.announce(_announcement(dirs["tile/v1"], "tile/v1", "tile"), preload=False)
    now = dt.datetime.now(dt.UTC)
    raws = [RawFrame("t.frames", 0, i, b"cam-1", b"", FrameMeta("cam-1", "line-1", i, int(now.timestamp() * 1e9),
                                                                "image/png", None, product).headers())
            for i, product in enumerate(["tile", "bottle"] * 3)]
    routed = ProductRouter(None, ProductSettings()).route(raws, shelf)
    assert [r.slot.current.version for r in routed if isinstance(r, Routed)] == ["tile/v1", "bottle/v1"] * 3
    assert loads == ["tile/v1", "bottle/v1"] and shelf.evictions == 1


def test_a_product_evicted_after_a_failed_then_good_load_reports_no_error(models, monkeypatch):
    from linewatch.detector.stream import model_shelf

    dirs, loads, load = models
    one = model_bytes(Scorer(dirs["bottle/v1"], "cpu", runtime="torch"))
    failures = [OSError("files still being copied")]

    def flaky(model_dir):
        if failures:
            raise failures.pop()
        return load(model_dir)

    monkeypatch.setattr(model_shelf, "RETRY_FIRST_S", 0.0)
    shelf = ModelShelf(flaky, budget_bytes=one + one // 2)
    shelf.announce(_announcement(dirs["tile/v1"], "tile/v1", "tile"), preload=False)
    shelf.announce(_announcement(dirs["bottle/v1"], "bottle/v1", "bottle"), preload=False)
    assert "files still being copied" in shelf.slot_for("tile")  # dead-lettered no_model
    assert shelf.slot_for("tile").current.version == "tile/v1"  # the next frame loads it
    assert shelf.slot_for("bottle").current.version == "bottle/v1" and shelf.evictions == 1  # tile evicted
    assert shelf.status()["tile"] == {"model_version": None, "device": None, "runtime": None,
                                      "registry_version": "tile/v1", "model_behind": None, "model_load_error": None}


def test_a_model_that_failed_to_load_is_tried_again_after_a_doubling_delay(models, monkeypatch):
    """A frame waited 30 s after any failure (the product's frames dead-lettered no_model meanwhile), however
    briefly the files were missing; now 1 s, doubling up to 30 s, as the rollout watcher retries. The watcher's own
    retry (the same version announced again) keeps the delay; another version starts afresh. A fake clock."""
    from linewatch.detector.stream import model_shelf

    dirs, loads, load = models
    clock = [1000.0]
    monkeypatch.setattr(model_shelf, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    failures = [OSError("files still being copied")] * 6
    tries = []

    def flaky(model_dir):
        tries.append(clock[0])
        if failures:
            raise failures.pop()
        return load(model_dir)

    shelf = ModelShelf(flaky, budget_bytes=2**40)
    tile = _announcement(dirs["tile/v1"], "tile/v1", "tile")
    shelf.announce(tile, preload=False)
    for delay in (1, 2, 4, 8, 16):  # a failure, then the delay before the next try
        assert "files still being copied" in shelf.slot_for("tile")  # a try, failed
        shelf.announce(tile, preload=False)  # the watcher's retry of the same announcement: no fresh start
        clock[0] += delay - 0.01
        assert shelf.slot_for("tile").endswith("(tried again in 0.0 s)") and len(tries) == 6 - len(failures)
        clock[0] += 0.01
    assert "files still being copied" in shelf.slot_for("tile")  # the sixth try
    clock[0] += 29.9
    assert "(tried again in 0.1 s)" in shelf.slot_for("tile")  # at most 30 s
    clock[0] += 0.1
    assert shelf.slot_for("tile").current.version == "tile/v1"  # the seventh loads it
    assert [round(b - a, 2) for a, b in zip(tries, tries[1:], strict=False)] == [1, 2, 4, 8, 16, 30]
    assert shelf.status()["tile"]["model_load_error"] is None
    # another version of a product starts at 1 s again, whatever the last one's delay was
    failures.extend([OSError("not there yet")] * 4)
    bottle = _announcement(dirs["bottle/v1"], "bottle/v1", "bottle")
    shelf.announce(bottle, preload=False)
    for delay in (1, 2, 4):
        assert "not there yet" in shelf.slot_for("bottle")
        clock[0] += delay
    bottle_v2 = _announcement(dirs["tile/v1"], "bottle/v2", "bottle")  # files of another name: refused
    shelf.announce(bottle_v2, preload=False)
    assert "not there yet" in shelf.slot_for("bottle")  # v2's first failure, without waiting v1's 8 s
    clock[0] += 0.1
    assert shelf.slot_for("bottle").endswith("(tried again in 0.9 s)")
    assert shelf.status()["bottle"]["model_load_error"].startswith("bottle/v2")
    # an older version's load failing after the newer one was announced (a frame's load of v1, while the watcher
    # announces v2) keeps the newer one's failure and delay: it used to replace them, and v2 was tried again at once,
    # its delay back at 1 s
    failures.append(OSError("late"))
    with pytest.raises(OSError, match="late"):
        shelf._load_checked(bottle, None)
    assert shelf.slot_for("bottle").endswith("(tried again in 0.9 s)")
    assert shelf.status()["bottle"]["model_load_error"].startswith("bottle/v2")
    # and, defensively, one recorded anyway does not hold the newer one back
    shelf._failed["bottle"] = LoadFailure(clock[0] + 30, "bottle/v1: OSError: late", 30.0, "bottle/v1")
    assert shelf.slot_for("bottle").endswith("holds model tile/v1, not bottle/v2")  # tried at once
    assert shelf.status()["bottle"]["model_load_error"].startswith("bottle/v2")


def test_a_frame_whose_model_load_is_overtaken_by_a_newer_announcement_is_scored_by_the_newer_one(models):
    """A frame of a product not held loads its announced v1 (decode stage); the watcher announces v2 meanwhile and
    v1's files turn out broken. The frame used to be dead-lettered with v1's error, and v1's failure recorded over
    v2's state; now it loads v2, and nothing of v1's failure remains."""
    dirs, loads, load = models
    v2 = _announcement(dirs["tile/v2"], "tile/v2", "tile")

    def loader(model_dir: Path) -> Scorer:
        if model_dir == dirs["tile/v1"]:
            shelf.announce(v2, preload=False)  # the watcher, during this load
            raise OSError("tile/v1's weights are truncated")
        return load(model_dir)

    shelf = ModelShelf(loader, budget_bytes=2**40)
    shelf.announce(_announcement(dirs["tile/v1"], "tile/v1", "tile"), preload=False)
    slot = shelf.slot_for("tile")
    assert not isinstance(slot, str) and slot.current.version == "tile/v2" and loads == ["tile/v2"]
    assert shelf.status()["tile"]["model_version"] == "tile/v2" and shelf._failed == {}
