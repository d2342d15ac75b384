"""What a worker keeps of a PNG frame, and the PNG's EXIF orientation read from its chunks: the kept file holds
exactly the pixels scored, and reading the orientation never decodes the pixels when no metadata follows them
(the bottle frames' case: before, it decoded every PNG frame twice)."""

import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from linewatch.detector.imaging import (
    ImageError,
    decode_image,
    exif_orientation,
    scored_pixels_file,
)
from linewatch.detector.png_chunks import png_chunks, png_metadata

from datasets import bottle

PIXELS = (np.random.default_rng(3).random((40, 56, 3)) * 255).astype(np.uint8)


def _png(image: Image.Image, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **params)
    return out.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _before_iend(png: bytes, chunk: bytes) -> bytes:
    at = png.rindex(b"IEND") - 4
    return png[:at] + chunk + png[at:]


def _pillows_own(data: bytes) -> int:
    """The reference: Pillow's PNG getexif(), which decodes the pixels first."""
    with Image.open(io.BytesIO(data)) as im:
        return im.getexif().get(0x0112, 1)


@pytest.fixture(scope="module")
def bottle_png() -> bytes:
    return (bottle() / "test" / "broken_large" / "000.png").read_bytes()


def test_an_8_bit_rgb_or_gray_png_is_kept_byte_for_byte(bottle_png):
    gray = _png(Image.fromarray(PIXELS[:, :, 0]))
    for data in (bottle_png, _png(Image.fromarray(PIXELS)), gray):
        assert scored_pixels_file(data) == (data, ".png")
    assert decode_image(gray).shape == (40, 56, 3)


@pytest.mark.parametrize("kind", ["rgba", "palette", "transparent_colour", "gray_alpha", "orientation_6",
                                  "orientation_8_after_pixels"])
def test_any_other_png_is_kept_as_a_png_of_the_scored_pixels(kind):
    rgb = Image.fromarray(PIXELS)
    data = {
        "rgba": lambda: _png(rgb.convert("RGBA")),
        "palette": lambda: _png(rgb.convert("P")),
        "transparent_colour": lambda: _png(rgb, transparency=tuple(int(v) for v in PIXELS[0, 0])),
        "gray_alpha": lambda: _png(rgb.convert("LA")),
        "orientation_6": lambda: _png(rgb, exif=_exif(6)),
        "orientation_8_after_pixels": lambda: _before_iend(_png(rgb), _chunk(b"eXIf", _exif(8))),
    }[kind]()
    kept, suffix = scored_pixels_file(data)
    assert suffix == ".png" and kept != data
    assert np.array_equal(decode_image(kept), decode_image(data)) and exif_orientation(kept) == 1


@pytest.mark.parametrize(("where", "orientation"), [("none", 1), ("before", 6), ("after", 6), ("after", 3),
                                                    ("xmp_before", 8), ("xmp_after", 5), ("text_after", 1)])
def test_a_pngs_orientation_is_pillows_own_reading(where, orientation):
    rgb = Image.fromarray(PIXELS)
    xmp = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           f'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="{orientation}"/>'
           f'</rdf:RDF></x:xmpmeta>')
    data = {
        "none": lambda: _png(rgb),
        "before": lambda: _png(rgb, exif=_exif(orientation)),
        "after": lambda: _before_iend(_png(rgb), _chunk(b"eXIf", _exif(orientation))),
        "xmp_before": lambda: _png(rgb, pnginfo=_text("XML:com.adobe.xmp", xmp)),
        "xmp_after": lambda: _before_iend(_png(rgb), _chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00"
                                                            + xmp.encode())),
        "text_after": lambda: _before_iend(_png(rgb), _chunk(b"tEXt", b"Comment\x00after the pixels")),
    }[where]()
    assert exif_orientation(data) == _pillows_own(data) == orientation


def _text(key: str, value: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(key, value)
    return info


def test_a_png_frames_orientation_is_read_without_decoding_its_pixels(bottle_png, monkeypatch):
    """The bottle frames carry their text and XMP chunks after the pixels, where Pillow looks only after decoding."""
    kinds = [kind for kind, _, _ in png_chunks(bottle_png)]
    assert kinds[0] == b"IHDR" and kinds[-3:] == [b"tEXt", b"iTXt", b"IEND"] and b"IDAT" in kinds
    metadata = png_metadata(bottle_png)
    assert len(metadata) < 2000 < len(bottle_png)  # the metadata alone, not the pixels

    def no_decode(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    assert exif_orientation(bottle_png) == 1
    assert scored_pixels_file(bottle_png) == (bottle_png, ".png")


def test_a_png_whose_chunks_cannot_be_read_is_read_the_slow_way():
    data = _png(Image.fromarray(PIXELS), exif=_exif(6))
    assert png_chunks(data[:-12]) is None and png_chunks(data[:-3]) is None and png_chunks(b"GIF89a") is None
    assert exif_orientation(data) == 6


def _apng(exif: bytes = b"", default_image: bool = False) -> bytes:
    """Three frames (the pixels rolled), frame 0 the IDAT one (or, ``default_image``, the IDAT a still image
    hidden from the animation)."""
    frames = [Image.fromarray(np.roll(PIXELS, 7 * i, axis=1)) for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, "PNG", save_all=True, append_images=frames[1:], exif=exif, default_image=default_image)
    return out.getvalue()


def _before_pixels(png: bytes, chunk: bytes) -> bytes:
    at = png.index(b"IDAT") - 4
    return png[:at] + chunk + png[at:]


def _bad_crc(kind: bytes, body: bytes) -> bytes:
    return _chunk(kind, body)[:-4] + (zlib.crc32(kind + body) ^ 1).to_bytes(4, "big")


@pytest.mark.parametrize(("case", "orientation"), [
    ("eXIf 6 ahead of the pixels, eXIf 1 after them", 6),  # Pillow reads no further than the first
    ("eXIf 1 ahead of the pixels, eXIf 6 after them", 1),
    ("eXIf 6 ahead of the pixels, a text chunk with a bad CRC after them", 6),
    ("eXIf 6 after the pixels with a bad CRC", 6),  # Pillow checks no CRC after the pixels
    ("eXIf without orientation ahead of the pixels, XMP orientation 6 after them", 1),
    ("APNG of 3 frames with eXIf 6", 6),
    ("ImageMagick's 'Raw profile type exif' text with 6 after the pixels", 6),
    ("XMP orientation 3 in a zTXt after the pixels", 3),
    ("XMP orientation 7 in a compressed iTXt after the pixels", 7),
])
def test_a_pngs_orientation_is_pillows_own_reading_on_odd_files(case, orientation):
    rgb = Image.fromarray(PIXELS)
    xmp = b'XML:com.adobe.xmp\x00\x00\x00\x00\x00<x:xmpmeta tiff:Orientation="6"/>'
    data = {
        "eXIf 6 ahead of the pixels, eXIf 1 after them": lambda: _before_iend(_png(rgb, exif=_exif(6)),
                                                                            _chunk(b"eXIf", _exif(1))),
        "eXIf 1 ahead of the pixels, eXIf 6 after them": lambda: _before_iend(_png(rgb, exif=_exif(1)),
                                                                            _chunk(b"eXIf", _exif(6))),
        "eXIf 6 ahead of the pixels, a text chunk with a bad CRC after them": lambda: _before_iend(
            _png(rgb, exif=_exif(6)), _bad_crc(b"tEXt", b"Comment\x00after the pixels")),
        "eXIf 6 after the pixels with a bad CRC": lambda: _before_iend(_png(rgb), _bad_crc(b"eXIf", _exif(6))),
        "eXIf without orientation ahead of the pixels, XMP orientation 6 after them": lambda: _before_iend(
            _png(rgb, exif=Image.Exif().tobytes()), _chunk(b"iTXt", xmp)),
        "APNG of 3 frames with eXIf 6": lambda: _apng(_exif(6)),
        "ImageMagick's 'Raw profile type exif' text with 6 after the pixels": lambda: _before_iend(_png(rgb), _chunk(
            b"tEXt", b"Raw profile type exif\x00\nexif\n  %d\n" % (len(_exif(6)) + 6)
            + b"457869660000" + _exif(6).hex().encode())),
        "XMP orientation 3 in a zTXt after the pixels": lambda: _before_iend(_png(rgb), _chunk(
            b"zTXt", b"XML:com.adobe.xmp\x00\x00" + zlib.compress(b'<x tiff:Orientation="3"/>'))),
        "XMP orientation 7 in a compressed iTXt after the pixels": lambda: _before_iend(_png(rgb), _chunk(
            b"iTXt", b"XML:com.adobe.xmp\x00\x01\x00\x00\x00" + zlib.compress(b'<x tiff:Orientation="7"/>'))),
    }[case]()
    assert exif_orientation(data) == _pillows_own(data) == orientation
    kept, _ = scored_pixels_file(data)
    assert np.array_equal(decode_image(kept), decode_image(data)) and exif_orientation(kept) == 1
    assert kept != data or orientation == 1


def _rgb16_behind_another_first_chunk() -> bytes:
    """A 16-bit RGB PNG whose first chunk is not IHDR and holds 8 and 2 where IHDR's bit depth and colour type
    would be (bytes 24, 25): Pillow opens it as mode RGB, libpng refuses it (IHDR must come first)."""
    rows = b"".join(b"\x00" + (PIXELS[y].astype(">u2") * 257).tobytes() for y in range(PIXELS.shape[0]))
    ihdr = PIXELS.shape[1].to_bytes(4, "big") + PIXELS.shape[0].to_bytes(4, "big") + bytes([16, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"prVt", bytes(8) + b"\x08\x02") + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))


@pytest.mark.parametrize("kind", ["APNG", "APNG with a hidden default image", "ICC profile", "gamma 1.0",
                                  "chromaticities of another colour space", "cICP", "two eXIf, 6 then 1"])
def test_a_png_a_viewer_shows_otherwise_is_kept_as_a_png_of_the_scored_pixels(kind):
    """A browser (the dashboard shows the kept bytes) animates an APNG, applies a colour profile, a gamma
    other than sRGB's or a colour space's chromaticities, and takes the first of two eXIf chunks (libpng: the
    second is a 'duplicate'), while decode_image gives the IDAT image's stored values and Pillow's last eXIf."""
    rgb = Image.fromarray(PIXELS)
    srgb_primaries = [31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000]
    data = {
        "APNG": _apng,
        "APNG with a hidden default image": lambda: _apng(default_image=True),
        "ICC profile": lambda: _png(rgb, icc_profile=_lab_profile()),
        "gamma 1.0": lambda: _before_pixels(_png(rgb), _chunk(b"gAMA", (100000).to_bytes(4, "big"))),
        "chromaticities of another colour space": lambda: _before_pixels(_png(rgb), _chunk(b"cHRM", b"".join(
            (v + 900).to_bytes(4, "big") for v in srgb_primaries))),
        "cICP": lambda: _before_pixels(_png(rgb), _chunk(b"cICP", bytes([9, 16, 0, 1]))),
        "two eXIf, 6 then 1": lambda: _before_pixels(_png(rgb, exif=_exif(6)), _chunk(b"eXIf", _exif(1))),
    }[kind]()
    kept, suffix = scored_pixels_file(data)
    assert suffix == ".png" and kept != data
    assert np.array_equal(decode_image(kept), decode_image(data)) and exif_orientation(kept) == 1


def _lab_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()


def test_srgb_tagged_pngs_are_still_kept_byte_for_byte(bottle_png):
    """The bottle frames carry gAMA 1/2.2 (45455, sRGB's own per the PNG spec); sRGB and its chromaticities
    render as untagged values do."""
    rgb = Image.fromarray(PIXELS)
    srgb = _before_pixels(_before_pixels(_png(rgb), _chunk(b"sRGB", b"\x00")), _chunk(b"cHRM", b"".join(
        v.to_bytes(4, "big") for v in [31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000])))
    for data in (bottle_png, srgb):
        assert b"gAMA" in bottle_png and scored_pixels_file(data) == (data, ".png")


def test_a_png_libpng_refuses_is_refused_not_kept():
    data = _rgb16_behind_another_first_chunk()
    with Image.open(io.BytesIO(data)) as im:
        assert (im.format, im.mode) == ("PNG", "RGB")
    with pytest.raises(ImageError):
        decode_image(data)
    with pytest.raises(ImageError):
        scored_pixels_file(data)


def test_an_interlaced_png_is_kept_byte_for_byte():
    """Adam7 (IHDR interlace method 1): every decoder gives the same pixels once the seven passes are in."""
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]
    rows = b"".join(b"\x00" + row.tobytes() for y0, x0, dy, dx in passes for row in PIXELS[y0::dy, x0::dx])
    ihdr = PIXELS.shape[1].to_bytes(4, "big") + PIXELS.shape[0].to_bytes(4, "big") + bytes([8, 2, 0, 0, 1])
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows))
            + _chunk(b"IEND", b""))
    assert np.array_equal(decode_image(data), PIXELS)
    assert scored_pixels_file(data) == (data, ".png")
