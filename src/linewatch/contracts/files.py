"""How every service names and identifies files: ``file://`` URIs, SHA-256 digests, image suffixes and the
frame content types. One home for each, so the copies cannot drift apart (a hand-written
``uri.removeprefix("file://")`` leaves ``%20`` in a path with a space, and the model is then "not found").
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import unquote, urlparse

# Image files every reader accepts (training folders, camera image folders, ``linewatch score``).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# The content type a camera names an image file's frames with (the ``content_type`` header); one per IMAGE_SUFFIXES.
CONTENT_TYPE_OF_SUFFIX = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp",
                          ".tif": "image/tiff", ".tiff": "image/tiff", ".webp": "image/webp"}


class UnsupportedURIError(ValueError):
    """A URI that names no local file: another scheme (``s3://``) or a ``file://`` URI of another host."""


def path_of(uri: str | Path) -> Path:
    """The local path a ``file://`` URI or a plain path names, percent-escapes decoded (``%20`` -> space).

    The inverse of :func:`uri_of`: ``path_of(uri_of(p)) == p.resolve()`` for every local path.

    Raises:
        UnsupportedURIError: a URI of another scheme, or a ``file://`` URI whose host is neither empty nor
            ``localhost``.
    """
    text = str(uri)
    if text.startswith("file:"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise UnsupportedURIError(f"{text!r} names a file on host {parsed.netloc!r}, not a local file")
        return Path(unquote(parsed.path))
    if "://" in text:
        raise UnsupportedURIError(f"unsupported URI {text!r}: only local paths and file:// URIs")
    return Path(text)


def uri_of(path: str | Path) -> str:
    """The ``file://`` URI of a local path (made absolute; special characters percent-escaped)."""
    return Path(path).resolve().as_uri()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks. Raises OSError when the file cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes (the identity of a training image in a model's manifest)."""
    return hashlib.sha256(data).hexdigest()
