"""One home for file names across services (field case c31): a state folder with a space, a '%' or a
non-ASCII name works everywhere, because every service turns URIs into paths with ``path_of``."""

from __future__ import annotations

import pytest

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.files import UnsupportedURIError, path_of, uri_of
from linewatch.contracts.settings import Settings
from linewatch.detector.model_files import read_metadata
from linewatch.detector.scoring import Scorer
from linewatch.trainer.registry import ModelRegistry, artifact_path


@pytest.mark.parametrize("name", ["state dir", "100% line", "Linie Ö#1", "a?b", "plain"])
def test_path_of_inverts_uri_of(tmp_path, name):
    path = tmp_path / name / "models" / "v1"
    uri = uri_of(path)
    assert uri.startswith("file:///") and " " not in uri
    assert path_of(uri) == path.resolve()
    assert path_of(str(path)) == path  # a plain path is a path
    assert path_of(uri.replace("file://", "file://localhost", 1)) == path.resolve()


@pytest.mark.parametrize("uri", ["s3://bucket/models/v1", "file://other-host/models/v1", "http://x/y"])
def test_uris_that_name_no_local_file_are_refused(uri):
    with pytest.raises(UnsupportedURIError):
        path_of(uri)


def test_settings_store_uris_are_decoded(tmp_path):
    images = tmp_path / "image store"
    settings = Settings(state_dir=tmp_path / "state dir", image_store=uri_of(images), artifact_store="")
    assert settings.image_store_root == images.resolve()
    assert settings.artifact_store_root == tmp_path / "state dir" / "models"


def test_field_case_c31_a_model_registered_under_a_state_folder_with_a_space_loads(tmp_path, quick_model):
    state = tmp_path / "line 7 state"
    engine = make_engine(f"sqlite:///{state / 'linewatch.db'}")
    migrate(engine)
    registry = ModelRegistry(engine, state / "models", kafka=None)
    row = registry.register(quick_model.model_dir)
    assert "%20" in row.artifact_uri  # the URI is escaped ...
    folder = artifact_path(row)
    assert folder == (state / "models" / "v1").resolve()  # ... and every reader decodes it
    assert read_metadata(folder)["version"] == "v1"
    assert Scorer(path_of(row.artifact_uri), "cpu").version == "v1"


def test_field_case_c19_distinct_ids_never_share_an_image_folder(tmp_path):
    import json

    from linewatch.contracts.messages import FrameMeta
    from linewatch.detector.stream.image_store import MAX_NAME_BYTES, ImageStore, safe_name

    from datasets import field_case

    pair = json.loads((field_case("c19_header_values") / "c19_poison_headers.json").read_text())[
        "camera_id_slash_vs_colon_same_folder"]
    ids = [p["camera_id"] for p in pair] + ["press_1", "press%2F1", ".", "..", ".hidden", "a" * 128, "a" * 127 + "b",
                                            "Ö" * 128, "Ö" * 127 + "Ä", "cam 1", "cam-1", "CAM-1", "~x"]
    names = [safe_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert safe_name("press/1") == "press%2F1" and safe_name("cam-1") == "cam-1"
    for name in names:
        assert "/" not in name and name not in (".", "..") and not name.startswith(".")
        assert len(name.encode()) <= MAX_NAME_BYTES
    store = ImageStore(tmp_path)
    folders = {store.folder(FrameMeta(i, "L1", 1, 1_700_000_000 * 10**9, "image/jpeg")) for i in ids}
    assert len(folders) == len(ids) and all(f.parent.parent == tmp_path.resolve() / "L1" for f in folders)


def test_every_image_suffix_has_an_image_content_type():
    from linewatch.contracts.files import CONTENT_TYPE_OF_SUFFIX, IMAGE_SUFFIXES

    assert sorted(CONTENT_TYPE_OF_SUFFIX) == sorted(IMAGE_SUFFIXES)
    assert all(t.startswith("image/") for t in CONTENT_TYPE_OF_SUFFIX.values())
