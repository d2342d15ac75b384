"""Product names and model version names (contracts/products.py): the rules every service shares."""

from __future__ import annotations

import datetime as dt

import pytest

from linewatch.contracts.messages import ACTIVE_MODEL_KEY, ModelAnnouncement, announcement_key
from linewatch.contracts.products import (
    DEFAULT_PRODUCT,
    ProductError,
    canonical_version,
    check_product,
    parse_version,
    version_name,
)


def test_version_names_count_per_product_and_the_default_product_keeps_its_bare_names():
    assert version_name("bottle", 3) == "bottle/v3"
    assert version_name(DEFAULT_PRODUCT, 3) == "v3"
    assert parse_version("bottle/v3") == ("bottle", 3)
    assert parse_version("magnetic_tile/v12") == ("magnetic_tile", 12)
    assert parse_version("v3") == parse_version("default/v3") == ("default", 3)
    assert canonical_version("default/v3") == "v3"
    assert canonical_version("bottle/v3") == "bottle/v3"


@pytest.mark.parametrize("name", ["", "Bottle", "-bottle", "bot tle", "bottle/v1", "a" * 41, "flasche-ü", "x\x00",
                                  "v3", "v03", "all"])
def test_a_product_name_that_could_not_be_a_folder_or_a_key_is_refused(name):
    with pytest.raises(ProductError, match="not a product name"):
        check_product(name)


@pytest.mark.parametrize("version", ["", "3", "v0", "v03", "bottle/", "bottle/3", "Bottle/v3", "a/b/v3", "bottle/v3 "])
def test_a_malformed_version_name_is_refused(version):
    with pytest.raises(ProductError):
        parse_version(version)


def test_the_longest_product_name_still_fits_a_version_column():
    assert len(version_name("a" * 40, 9_999_999_999)) <= 64
    assert check_product("a" * 40) == "a" * 40


def test_an_announcement_names_its_product_and_its_key_and_an_old_one_is_the_default_products():
    old = ModelAnnouncement.model_validate_json(
        b'{"version": "v3", "artifact_uri": "file:///m/v3", "activated_at": "2026-12-01T06:00:00Z"}')
    assert (old.product, old.key) == ("default", b"active") and old.key == ACTIVE_MODEL_KEY
    new = ModelAnnouncement(version="bottle/v3", artifact_uri="file:///m/bottle/v3",
                            activated_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC), product="bottle")
    assert new.key == announcement_key("bottle") == b"active/bottle"
    assert ModelAnnouncement.model_validate_json(new.model_dump_json()) == new
    with pytest.raises(ValueError, match="not a product name"):  # a worker skips it as malformed
        ModelAnnouncement.model_validate_json(new.model_dump_json().replace('"bottle"', '"Bottle"'))
