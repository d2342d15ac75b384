"""Reading kept frames (originals and heatmap overlays) from the image store by their ``file://`` URIs."""

from __future__ import annotations

from pathlib import Path

from linewatch.contracts.files import UnsupportedURIError, path_of

MAX_BYTES = 64 * 1024 * 1024


def kept_file(uri: str, root: Path) -> Path | None:
    """The local file a ``file://`` URI (or plain path) names, if it lies inside the image store ``root``.

    A URI outside the store (a tampered row, another machine's mount) gives None rather than a read
    of an arbitrary file.
    """
    try:
        resolved = path_of(uri).resolve()
        resolved.relative_to(Path(root).resolve())
    except (UnsupportedURIError, OSError, ValueError):
        return None
    return resolved


def read_kept(uri: str | None, root: Path) -> tuple[bytes | None, str]:
    """The bytes of a kept frame, or None and a sentence saying why they cannot be shown. Never raises."""
    if not uri:
        return None, "not kept (only defects and sampled good frames are stored)"
    path = kept_file(uri, root)
    if path is None:
        return None, f"outside the image store ({root})"
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            return None, f"too large to show ({size / 1e6:.0f} MB)"
        return path.read_bytes(), ""
    except FileNotFoundError:
        return None, "file missing from the image store"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
