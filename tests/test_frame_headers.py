"""Frame headers are checked at the boundary against the limits every store holds (field case c19, c19b):
a value that SQL, Redis or the image store could never take is a ``bad_headers`` dead letter, not a retry."""

from __future__ import annotations

import json
import time

import pytest

from linewatch.contracts.messages import (
    CAPTURED_AT_MAX_NS,
    FRAME_SCHEMA,
    ID_MAX_CHARS,
    FrameMeta,
    MessageError,
    check_id,
)

from datasets import field_case


def _headers(**values: object) -> list[tuple[str, bytes]]:
    base = {"schema": FRAME_SCHEMA, "camera_id": "cam-1", "line_id": "L1", "frame_id": 7,
            "captured_at": time.time_ns(), "content_type": "image/jpeg"}
    base.update(values)
    return [(k, str(v).encode()) for k, v in base.items() if v is not None]


def _poison_sets() -> dict[str, dict]:
    cases = json.loads((field_case("c19_header_values") / "c19_poison_headers.json").read_text())
    return {name: ids for name, ids in cases.items() if isinstance(ids, dict)}


def test_a_normal_frame_parses():
    meta = FrameMeta.from_headers(_headers(part_id="SN-0042", line_id="Linie-Ö"))
    assert (meta.camera_id, meta.line_id, meta.frame_id, meta.part_id) == ("cam-1", "Linie-Ö", 7, "SN-0042")
    assert FrameMeta.from_headers(meta.headers()) == meta


@pytest.mark.parametrize("name", sorted(_poison_sets()))
def test_field_case_c19_poison_headers_are_bad_headers(name):
    ids = _poison_sets()[name]
    with pytest.raises(MessageError) as err:
        FrameMeta.from_headers(_headers(**ids))
    assert err.value.reason == "bad_headers"
    field = next(k for k in ("camera_id", "line_id", "part_id") if k in str(err.value))
    assert field in ids


@pytest.mark.parametrize(("header", "value", "says"), [
    ("captured_at", 10**22, "captured_at"),  # c19b: the year 316,889; the worker used to exit on it
    ("captured_at", -5, "captured_at"),
    ("captured_at", CAPTURED_AT_MAX_NS, "captured_at"),
    ("captured_at", "1.5e18", "integers"),
    ("frame_id", 2**63, "frame_id"),
    ("frame_id", -1, "frame_id"),
    ("schema", "linewatch.frame/9", "schema"),
    ("schema", None, "schema"),
    ("camera_id", "x" * (ID_MAX_CHARS + 1), "camera_id"),
    ("camera_id", "cam\t1", "camera_id"),
    ("line_id", "L1\n", "line_id"),
    ("part_id", "\x00", "part_id"),
    ("content_type", "image/jpeg\x00", "content_type"),
    ("content_type", None, "content_type"),
])
def test_every_header_value_outside_the_limits_is_bad_headers(header, value, says):
    with pytest.raises(MessageError) as err:
        FrameMeta.from_headers(_headers(**{header: value}))
    assert err.value.reason == "bad_headers"
    assert says in err.value.detail


def test_header_bytes_that_are_not_utf8_are_named():
    headers = [(k, v) for k, v in _headers() if k != "camera_id"] + [("camera_id", b"\xff\xfe")]
    with pytest.raises(MessageError, match="camera_id"):
        FrameMeta.from_headers(headers)


def test_ids_at_the_limit_and_in_any_script_are_accepted():
    assert check_id("line_id", "Ö" * ID_MAX_CHARS) == "Ö" * ID_MAX_CHARS
    assert check_id("camera_id", "press/1") == "press/1"
    with pytest.raises(ValueError, match="at most 128"):
        check_id("line_id", "Ö" * (ID_MAX_CHARS + 1))
