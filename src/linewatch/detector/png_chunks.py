"""A PNG's chunks read from their headers alone, without decoding a pixel: the metadata Pillow would read only after
decoding (:func:`png_metadata`, for :func:`..imaging.exif_orientation`) and whether a viewer shows the stored values
as they are (:func:`renders_as_stored`, for :func:`..imaging.scored_pixels_file`). PNG spec: W3C PNG 3rd edition."""

from __future__ import annotations

import re
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PIXEL_CHUNKS = (b"IDAT", b"fdAT")
_ANIMATION_CHUNKS = (b"acTL", b"fcTL", b"fdAT")
_CHUNK_TYPE = re.compile(rb"\w{4}")  # Pillow's test of a chunk type: it stops reading at the first that fails


def _png_chunk(kind: bytes, body: bytes = b"") -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]] | None:
    """The chunks of PNG bytes in file order, as (type, start, end) byte offsets of each whole chunk (length,
    type, data, CRC), read from the chunk headers alone (no pixel decoded); None when ``data`` is not a PNG or its
    chunk list does not reach ``IEND`` within it."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        kind, end = data[pos + 4 : pos + 8], pos + 12 + int.from_bytes(data[pos : pos + 4], "big")
        if end > len(data):
            return None
        chunks.append((kind, pos, end))
        if kind == b"IEND":
            return chunks
        pos = end
    return None


def png_metadata(data: bytes) -> bytes | None:
    """A PNG holding the chunks of ``data`` that Pillow reads when it decodes the still image, but not its pixel
    data, in their order, then an empty ``IDAT``: what Pillow reads with the header is then the metadata its PNG
    ``getexif()`` reads after decoding (text and EXIF chunks may follow the pixels). As Pillow does after the
    pixels, the CRCs of the chunks there are not checked (they are recomputed) and reading stops at a chunk type
    Pillow does not take for one (not 4 letters, digits or underscores). None when ``data`` is not a PNG whose
    chunks can be read, or is an APNG (Pillow stops at the next frame)."""
    chunks = png_chunks(data)
    if chunks is None or any(kind in _ANIMATION_CHUNKS for kind, _, _ in chunks):
        return None
    kept, after_pixels = [], False
    for kind, start, end in chunks:
        if kind == b"IEND" or (after_pixels and not _CHUNK_TYPE.fullmatch(kind)):
            break
        if kind in _PIXEL_CHUNKS:
            after_pixels = True
        elif after_pixels:
            kept.append(_png_chunk(kind, data[start + 8 : end - 4]))
        else:
            kept.append(data[start:end])
    return PNG_SIGNATURE + b"".join(kept) + _png_chunk(b"IDAT") + _png_chunk(b"IEND")


# Chunks a viewer renders by, which decode_image does not apply: a transparent colour, a colour profile or colour
# space (the dashboard's browser converts the colours), animation. gAMA and cHRM are checked for sRGB's own values.
_RENDERED_OTHERWISE = (b"tRNS", b"iCCP", b"cICP", b"mDCv", b"cLLi", *_ANIMATION_CHUNKS)
_SRGB_GAMMA = (45455).to_bytes(4, "big")  # 1/2.2 * 100000: the gAMA the PNG spec gives sRGB (the bottle frames')
_SRGB_CHROMATICITIES = b"".join(v.to_bytes(4, "big") for v in (31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000))


def renders_as_stored(data: bytes) -> bool:
    """Whether PNG bytes show, in a viewer, the values libpng decodes (not turned: EXIF orientation aside): an 8-bit
    RGB or gray PNG (IHDR first, as libpng requires) without a transparent colour, colour profile, colour space
    other than sRGB, animation, or second eXIf (libpng and browsers take the first, Pillow the last)."""
    chunks = png_chunks(data)
    if chunks is None or chunks[0][0] != b"IHDR" or data[24] != 8 or data[25] not in (0, 2):  # bit depth, colour
        return False
    kinds = [kind for kind, _, _ in chunks]
    if any(kind in _RENDERED_OTHERWISE for kind in kinds) or kinds.count(b"eXIf") > 1:
        return False
    # with sRGB, gAMA and cHRM are ignored by the decoders that know sRGB (PNG spec, sRGB chunk)
    bodies = {kind: data[start + 8 : end - 4] for kind, start, end in chunks if kind in (b"gAMA", b"cHRM")}
    return b"sRGB" in kinds or (bodies.get(b"gAMA", _SRGB_GAMMA) == _SRGB_GAMMA
                                and bodies.get(b"cHRM", _SRGB_CHROMATICITIES) == _SRGB_CHROMATICITIES)
