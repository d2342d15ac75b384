"""Bad images get a clear error naming them; grayscale and RGBA are converted. Real bottle images as the base."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from linewatch.detector.datasets import DatasetError, open_dataset
from linewatch.detector.imaging import ImageError, decode_image, probe_image, read_image, to_model_input

from datasets import bottle, field_case


@pytest.fixture(scope="module")
def png_bytes() -> bytes:
    return (bottle() / "test" / "broken_large" / "000.png").read_bytes()


@pytest.fixture(scope="module")
def jpeg_bytes(png_bytes) -> bytes:
    rgb = cv2.imdecode(np.frombuffer(png_bytes, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".jpg", rgb)[1].tobytes()


def test_real_png_decodes_to_rgb(png_bytes):
    rgb = decode_image(png_bytes, "000.png")
    assert rgb.shape == (900, 900, 3) and rgb.dtype == np.uint8
    bgr = cv2.imdecode(np.frombuffer(png_bytes, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(rgb, bgr[:, :, ::-1])
    assert probe_image(png_bytes) == ("PNG", 900, 900)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda png, jpg: b"", "empty"),
        (lambda png, jpg: b"speed=12 temperature=31.5 this is a sensor log, not a frame\n" * 10, "not_an_image"),
        (lambda png, jpg: bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not_an_image"),
        (lambda png, jpg: png[: len(png) // 2], "truncated"),
        (lambda png, jpg: jpg[: len(jpg) * 2 // 3], "truncated"),
        (lambda png, jpg: png[:1000] + bytes(2000) + png[3000:], "undecodable"),
    ],
    ids=["zero-length", "text", "random-bytes", "truncated-png", "truncated-jpeg", "corrupt-png"],
)
def test_bad_bytes_are_refused_with_a_reason(png_bytes, jpeg_bytes, mutate, reason):
    with pytest.raises(ImageError) as err:
        decode_image(mutate(png_bytes, jpeg_bytes), "cam-1/frame-7")
    assert err.value.reason == reason
    assert str(err.value).startswith("cam-1/frame-7: ")


def test_too_many_pixels_is_refused_before_decoding():
    # A 50-megapixel image that compresses to a few kB: the header alone says it is too big.
    big = cv2.imencode(".png", np.zeros((5000, 10000), np.uint8))[1].tobytes()
    assert len(big) < 200_000
    with pytest.raises(ImageError) as err:
        decode_image(big, "bomb.png", max_pixels=40_000_000)
    assert err.value.reason == "too_many_pixels"
    assert "10000x5000" in err.value.detail


def test_16_bit_images_are_refused_clearly():
    data = cv2.imencode(".png", np.full((64, 64), 40000, np.uint16))[1].tobytes()
    with pytest.raises(ImageError) as err:
        decode_image(data, "deep.png")
    assert err.value.reason == "unsupported_depth"
    assert "8 bits" in err.value.detail


def test_grayscale_and_rgba_are_converted_to_rgb(png_bytes):
    rgb = decode_image(png_bytes)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    out = decode_image(cv2.imencode(".png", gray)[1].tobytes())
    assert out.shape == (900, 900, 3)
    assert np.array_equal(out[:, :, 0], gray) and np.array_equal(out[:, :, 2], gray)
    buf = io.BytesIO()
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), "RGBA").save(buf, "PNG")
    rgba = decode_image(buf.getvalue())
    assert rgba.shape == (900, 900, 3) and np.array_equal(rgba, rgb)


def test_tiny_images_are_refused_and_odd_sizes_resized():
    with pytest.raises(ImageError, match="smaller than 16 px"):
        decode_image(cv2.imencode(".png", np.zeros((8, 300, 3), np.uint8))[1].tobytes())
    odd = decode_image(cv2.imencode(".png", np.full((131, 257, 3), 77, np.uint8))[1].tobytes())
    model_input = to_model_input(odd, 64)
    assert model_input.shape == (3, 64, 64) and int(model_input.mean()) == 77


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "cam7_0042.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    with pytest.raises(ImageError, match="cam7_0042.png"):
        read_image(bad)
    with pytest.raises(ImageError, match="cannot read file"):
        read_image(tmp_path / "missing.png")


def test_dataset_layouts_are_detected_and_broken_ones_explained(tmp_path):
    ds = open_dataset(bottle())
    assert (ds.layout, len(ds.train), len(ds.test)) == ("mvtec", 209, 83)
    assert ds.defect_types == ["broken_large", "broken_small", "contamination"]
    assert sum(s.is_defect for s in ds.test) == 63 and all(s.mask.is_file() for s in ds.test if s.is_defect)

    with pytest.raises(DatasetError, match="no images found"):
        open_dataset(tmp_path)
    (tmp_path / "test" / "crack").mkdir(parents=True)
    with pytest.raises(DatasetError, match="train/good"):
        open_dataset(tmp_path)
    (tmp_path / "train" / "good").mkdir(parents=True)
    (tmp_path / "train" / "good" / "a.png").write_bytes(b"x")
    (tmp_path / "test" / "crack" / "000.png").write_bytes(b"x")
    unannotated = open_dataset(tmp_path)  # no ground_truth/crack/: image-level labels only
    assert [(s.label, s.mask, s.pixels_known) for s in unannotated.test] == [("crack", None, False)]
    (tmp_path / "ground_truth" / "crack").mkdir(parents=True)
    with pytest.raises(DatasetError, match="without its mask"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such directory"):
        open_dataset(tmp_path / "nope")


def test_magnetic_tile_split_is_read_as_given():
    from datasets import magnetic_tile

    ds = open_dataset(magnetic_tile())
    assert ds.layout == "magnetic_tile"
    assert len(ds.train) == 714
    assert sum(not s.is_defect for s in ds.test) == 238
    assert ds.defect_types == ["Blowhole", "Break", "Crack", "Fray", "Uneven"]


def test_device_jpeg_decoding_matches_the_cpu_path(png_bytes):
    """The worker's CUDA path (torchvision.io decode + prepare on the device), run here on the CPU device, under
    each input geometry: a square frame, a letterboxed 4:3 one and a tiled strip."""
    import torch

    from linewatch.detector.geometry import InputGeometry, model_inputs
    from linewatch.detector.stream.device_decode import decode_jpegs

    rgb = decode_image(png_bytes)
    # 900x900, 900x600 (letterboxed), 900x400 (tiled); 900x100 is tiled too, but its padding (114 rows) is wider
    # than the 28 rows it pads, which PyTorch cannot reflect: that one goes to the CPU path
    frames = [rgb, rgb[150:750], rgb[250:650], rgb[400:500]]
    jpegs = [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
             for f in frames]
    geometry = InputGeometry("auto", 256, tile_scale=256 / 900)
    *decoded, thin, broken = decode_jpegs([*jpegs, b"\xff\xd8\xff" + bytes(100)], geometry, torch.device("cpu"))
    assert broken is None and thin is None  # refused frames go back to the CPU path
    (framed, preview, w, h) = decoded[0]
    assert (w, h) == (900, 900) and framed.tiles.shape == (1, 3, 256, 256) and framed.tiles.dtype == torch.uint8
    assert preview.shape == (640, 640, 3)
    for jpeg, (framed, _, w, h) in zip(jpegs[:3], decoded, strict=True):
        cpu = model_inputs(decode_image(jpeg), geometry)
        assert framed.plan == cpu.plan and (h, w) == cpu.plan.frame
        assert np.abs(framed.tiles.numpy().astype(np.int16) - cpu.tiles.astype(np.int16)).mean() < 1.0
    assert [d[0].plan.mode for d in decoded] == ["letterbox", "letterbox", "tile"]


@pytest.mark.parametrize("name", ["corrupt_mid_128x128.jpg", "jpeg_corrupt_middle_10pct_dropped_900x900.jpg"])
def test_field_case_c02_a_jpeg_corrupt_mid_stream_is_refused_as_corrupt(name):
    """10% of the bytes gone from the middle, the end marker intact: libjpeg only warns and fills in grey."""
    data = (field_case("c02_corrupt_mid_jpeg") / name).read_bytes()
    assert data.rstrip(b"\x00").endswith(b"\xff\xd9")  # the truncation check alone cannot see it
    with pytest.raises(ImageError) as err:
        decode_image(data, "cam-1/frame-9")
    assert err.value.reason == "corrupt"
    assert "Corrupt JPEG data" in err.value.detail


def test_field_case_c02_the_intact_original_decodes_to_opencvs_pixels():
    data = (field_case("c02_corrupt_mid_jpeg") / "intact_128x128.jpg").read_bytes()
    rgb = decode_image(data)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert rgb.shape == (128, 128, 3) and np.array_equal(rgb, bgr[:, :, ::-1])


def test_the_gpu_workers_integrity_check_refuses_c02_and_passes_the_original():
    from linewatch.detector.imaging import check_jpeg

    folder = field_case("c02_corrupt_mid_jpeg")
    check_jpeg((folder / "intact_128x128.jpg").read_bytes())
    for name in ("corrupt_mid_128x128.jpg", "jpeg_corrupt_middle_10pct_dropped_900x900.jpg"):
        with pytest.raises(ImageError) as err:
            check_jpeg((folder / name).read_bytes(), name)
        assert err.value.reason == "corrupt"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_once_and_the_kept_file_holds_the_upright_pixels(orientation):
    import io

    import cv2
    from PIL import Image, ImageOps

    from linewatch.detector.imaging import decode_image, exif_orientation, scored_pixels_file

    pixels = (np.random.default_rng(0).random((40, 64, 3)) * 255).astype(np.uint8)
    plain = cv2.imencode(".jpg", pixels)[1].tobytes()
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    tagged = plain[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + plain[2:]  # same scan data
    assert exif_orientation(tagged) == orientation
    # what a viewer shows: Pillow's own transpose of the same decoded pixels
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(tagged)))  # Pillow's decode: compare shapes only
    method = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
              7: "TRANSVERSE", 8: "ROTATE_90"}.get(orientation)
    base = Image.fromarray(decode_image(plain))
    upright = np.asarray(base.transpose(getattr(Image.Transpose, method)) if method else base)
    assert upright.shape[:2] == (shown.height, shown.width)
    assert np.array_equal(decode_image(tagged), upright)
    kept, suffix = scored_pixels_file(tagged)
    assert suffix == (".jpg" if orientation == 1 else ".png")
    assert np.array_equal(decode_image(kept), upright) and exif_orientation(kept) == 1


def test_the_overlay_preview_is_at_most_640_px_and_close_to_an_area_resize(png_bytes):
    from linewatch.detector.stream.frames import preview_image

    rgb = decode_image(png_bytes)  # MVTec bottle, 900x900
    preview = preview_image(rgb)
    assert preview.shape == (640, 640, 3) and preview.dtype == np.uint8
    area = cv2.resize(rgb, (640, 640), interpolation=cv2.INTER_AREA)
    assert np.abs(preview.astype(np.int16) - area).mean() < 0.5  # grey levels: bilinear at a factor of 1.4
    strip = np.tile(rgb[:256], (1, 5, 1))  # 4500x256: a factor of 7, area interpolation
    assert np.array_equal(preview_image(strip), cv2.resize(strip, (640, 36), interpolation=cv2.INTER_AREA))
    small = rgb[:300, :200]
    assert preview_image(small) is small  # a frame of 640 px or less is its own preview
