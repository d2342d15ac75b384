"""The registry per product (issue 18, docs/products.md): each product counts its own versions (``bottle/v1``,
``bottle/v2``, ``magnetic_tile/v1``), its folders sit under ``<artifact store>/<product>/``, and activating or
rolling back one product's version changes nothing of another's, in SQL (SQLite and PostgreSQL) and on the models
topic (a real Apache Kafka broker: one compacted key per product; workers of today follow the default product's
key only, so they never see another product's rollout)."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from linewatch.cli import app
from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.kafka import ensure_topics
from linewatch.contracts.settings import Settings, get_settings
from linewatch.detector.model_files import read_metadata
from linewatch.trainer.registry import ModelRegistry, RegistryError
from linewatch.trainer.rollout import AnnounceRetry, current_announcement


def model_dir(where: Path, seed: str) -> Path:
    """A model directory the registry accepts (model.json and weights matching its SHA-256; never scored here):
    registering, activating and announcing only read model.json and copy the files."""
    where.mkdir(parents=True)
    weights = f"student weights {seed}".encode()
    (where / "student.safetensors").write_bytes(weights)
    (where / "model.json").write_text(json.dumps({
        "format": "linewatch-stpm/1", "backbone": "resnet18", "teacher_weights": "imagenet", "image_size": 128,
        "thresholds": {"image": 1.0, "pixel": 0.5}, "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "map_smoothing_sigma": 2.0}))
    return where


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'record.db'}"
    return request.getfixturevalue("postgres_server").fresh_database(f"prodreg_{abs(hash(request.node.name)) % 10**8}")


@pytest.fixture
def registry(database_url, tmp_path) -> Iterator[ModelRegistry]:
    engine = make_engine(database_url)
    migrate(engine)
    yield ModelRegistry(engine, tmp_path / "models", None)
    engine.dispose()


def _two_products(reg: ModelRegistry, tmp_path: Path) -> None:
    """bottle v1, v2 and magnetic_tile v1, v2 registered interleaved, then bottle/v1 and magnetic_tile/v2 active."""
    for n in (1, 2):
        for product in ("bottle", "magnetic_tile"):
            row = reg.register(model_dir(tmp_path / f"in-{product}-{n}", f"{product}{n}"), product=product)
            assert (row.version, row.product, row.number) == (f"{product}/v{n}", product, n)
    reg.activate("bottle/v1", "maria")
    reg.activate("magnetic_tile/v2", "olek")


def _state(reg: ModelRegistry, product: str | None) -> list[tuple]:
    return [(r.version, r.status, r.activated_by) for r in reg.list(product)]


def test_each_product_counts_its_own_versions_in_its_own_folder(registry, tmp_path):
    _two_products(registry, tmp_path)
    default = registry.register(model_dir(tmp_path / "in-default", "default"))
    assert (default.version, default.product, default.number) == ("v1", "default", 1)
    assert [r.version for r in registry.list()] == ["v1"]  # the default product, as before products
    assert [r.version for r in registry.list(None)] == ["bottle/v1", "bottle/v2", "v1", "magnetic_tile/v1",
                                                       "magnetic_tile/v2"]
    folder = tmp_path / "models" / "bottle" / "v2"
    assert registry.get("bottle/v2").artifact_uri == folder.as_uri()
    assert read_metadata(folder)["version"] == "bottle/v2"  # every result scored with it says so
    assert read_metadata(tmp_path / "models" / "v1")["version"] == "v1"
    assert registry.get("default/v1").version == "v1"
    with pytest.raises(RegistryError, match="no model version"):
        registry.get("bottle/v3")
    with pytest.raises(RegistryError, match="not a product name"):
        registry.register(model_dir(tmp_path / "in-bad", "bad"), product="Bottle")


def test_activating_and_rolling_back_one_product_leaves_the_other_as_it_was(registry, tmp_path):
    _two_products(registry, tmp_path)
    tiles = _state(registry, "magnetic_tile")
    assert tiles == [("magnetic_tile/v1", "candidate", None), ("magnetic_tile/v2", "active", "olek")]

    registry.activate("bottle/v2", "maria")
    assert _state(registry, "bottle") == [("bottle/v1", "retired", "maria"), ("bottle/v2", "active", "maria")]
    assert _state(registry, "magnetic_tile") == tiles
    assert registry.active("magnetic_tile").version == "magnetic_tile/v2"
    assert registry.active() is None  # the default product has no version

    assert registry.rollback("erin", product="bottle").version == "bottle/v1"
    assert registry.active("bottle").version == "bottle/v1"
    assert _state(registry, "magnetic_tile") == tiles
    # magnetic_tile has never had an earlier active version: nothing to roll back to, nothing changed
    with pytest.raises(RegistryError, match="no earlier active version of magnetic_tile"):
        registry.rollback("erin", product="magnetic_tile")
    assert _state(registry, "magnetic_tile") == tiles


@pytest.mark.services
def test_announcements_are_keyed_per_product_on_the_models_topic(apache_kafka, postgres_server, tmp_path):
    settings = Settings(state_dir=tmp_path / "state",
                        database={"url": postgres_server.fresh_database(f"prodann_{uuid.uuid4().hex[:8]}")},
                        kafka={"bootstrap_servers": apache_kafka.bootstrap_servers,
                               "topic_prefix": f"t{uuid.uuid4().hex[:8]}"})
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
        ensure_topics(settings.kafka)
        reg = ModelRegistry(engine, tmp_path / "models", settings.kafka, AnnounceRetry(attempts=2, timeout_s=10.0))
        reg.use(model_dir(tmp_path / "in-default", "default"), "test")  # what an installation of today runs
        _two_products(reg, tmp_path)
        reg.activate("bottle/v2", "maria")
        seen = {p: current_announcement(settings.kafka, product=p) for p in ("default", "bottle", "magnetic_tile")}
        assert {p: (a.version, a.product, a.activated_by) for p, a in seen.items()} == {
            "default": ("v1", "default", "test"), "bottle": ("bottle/v2", "bottle", "maria"),
            "magnetic_tile": ("magnetic_tile/v2", "magnetic_tile", "olek")}
        assert seen["bottle"].artifact_uri == (tmp_path / "models" / "bottle" / "v2").as_uri()
        reg.rollback("erin", product="bottle")
        assert current_announcement(settings.kafka, product="bottle").version == "bottle/v1"
        assert current_announcement(settings.kafka, product="magnetic_tile").version == "magnetic_tile/v2"
        assert current_announcement(settings.kafka).version == "v1"
    finally:
        engine.dispose()


def test_the_model_commands_take_a_product(tmp_path, monkeypatch):
    """``linewatch model register --product``, ``list --product``, ``activate P/vN``, ``rollback P`` on a SQLite
    record (no Kafka: recorded in SQL only), run in this process (each ``python -m linewatch`` would import for
    seconds)."""
    monkeypatch.setenv("LINEWATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LINEWATCH_DATABASE__URL", raising=False)
    monkeypatch.delenv("LINEWATCH_KAFKA__BOOTSTRAP_SERVERS", raising=False)

    def linewatch(*args: str, code: int = 0) -> str:
        get_settings.cache_clear()  # the settings of this environment; none left cached for other tests (finally)
        done = CliRunner().invoke(app, ["model", *args])
        assert done.exit_code == code, done.output
        return done.stdout if code == 0 else done.stderr

    try:
        for n in (1, 2):
            assert linewatch("register", str(model_dir(tmp_path / f"b{n}", f"b{n}")), "--product", "bottle") == \
                f"bottle/v{n} registered (candidate)\n"
        assert linewatch("register", str(model_dir(tmp_path / "t1", "t1")), "--product", "magnetic_tile",
                         "--activate") == "magnetic_tile/v1 registered (active)\n"
        assert linewatch("activate", "bottle/v1", "--by", "maria") == "bottle/v1 is active\n"
        assert linewatch("activate", "bottle/v2", "--by", "maria") == "bottle/v2 is active\n"
        assert linewatch("rollback", "bottle", "--by", "erin") == "rolled back: bottle/v1 is active\n"
        listed = [line.split()[:2] for line in linewatch("list", "--product", "bottle").splitlines()]
        assert listed == [["bottle/v1", "active"], ["bottle/v2", "retired"]]
        assert [line.split()[:2] for line in linewatch("list", "--product", "magnetic_tile").splitlines()] == \
            [["magnetic_tile/v1", "active"]]
        assert linewatch("list") == "no model versions registered for the product default\n"
        assert len(linewatch("list", "--product", "all").splitlines()) == 3
        assert "no earlier active version of magnetic_tile" in linewatch("rollback", "magnetic_tile", code=2)
    finally:
        get_settings.cache_clear()


def test_train_with_a_product_registers_the_model_as_its_next_candidate(tmp_path, monkeypatch):
    """``linewatch train --product P`` trains a folder as before and registers it as P's next version (a candidate);
    an invalid product name is refused before any training (nothing written)."""
    from datasets import bottle

    goods = tmp_path / "goods"
    goods.mkdir()
    for image in sorted((bottle() / "train" / "good").glob("*.png"))[:12]:
        (goods / image.name).symlink_to(image)
    monkeypatch.setenv("LINEWATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LINEWATCH_DATABASE__URL", raising=False)
    monkeypatch.delenv("LINEWATCH_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    quick = ["--epochs", "1", "--image-size", "64", "--batch-size", "4", "--force", "--no-export", "--no-progress"]
    try:
        get_settings.cache_clear()
        refused = CliRunner().invoke(app, ["train", "--data", str(goods), "--out", str(tmp_path / "bad"), *quick,
                                           "--product", "Bottle!"])
        assert refused.exit_code == 2 and "not a product name" in refused.stderr
        assert not (tmp_path / "bad").exists()
        done = CliRunner().invoke(app, ["train", "--data", str(goods), "--out", str(tmp_path / "m"), *quick,
                                        "--product", "bottle"])
        assert done.exit_code == 0, done.output
        assert "registered as bottle/v1 (candidate)" in done.stdout
        assert "best epoch 1/1," in done.stdout  # --epochs 1 is one epoch: the step budget raises only the default
        listed = CliRunner().invoke(app, ["model", "list", "--product", "bottle"])
        assert [line.split()[:2] for line in listed.stdout.splitlines()] == [["bottle/v1", "candidate"]]
    finally:
        get_settings.cache_clear()
