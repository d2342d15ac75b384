"""Decode benchmark: what the strict JPEG check costs a worker, side by side in one run.

    python bench/decode.py [--repeats 3]

Times, per frame, on real JPEG frames (Magnetic Tile crops, the c09 320x240 frames, the 640x480 and
4096x256 field-case frames): OpenCV's plain decode (what workers used before), linewatch's strict decode
(``decode_image``: libjpeg-turbo through simplejpeg, refusing damaged data) and the integrity check GPU
workers run on the CPU before nvJPEG (``check_jpeg``, a strict decode at 1/8 scale). Prints a table with
the ratio to OpenCV; the pixels of the strict decode are checked to equal OpenCV's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def frames() -> list[tuple[str, bytes]]:
    groups = {
        "magnetic tile (~250-500 px)": sorted((SHARED / "data" / "magnetic_tile").glob("MT_Free/Imgs/*.jpg"))[:200],
        "c09 frames (320x240)": sorted((SHARED / "cases" / "c09_threshold_few_goods" / "train40").glob("*.jpg")),
        "640x480": [SHARED / "cases" / "c19_header_values" / "c19_frame_640x480.jpg"],
        "line scan 4096x256": [SHARED / "cases" / "c11_linescan_strip" / "jpeg_linescan_strip_4096x256.jpg"],
    }
    return [(name, p.read_bytes()) for name, paths in groups.items() for p in paths]


def per_frame_ms(fn, data: list[bytes], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for d in data:
            fn(d)
        times.append((time.perf_counter() - t0) / len(data) * 1000)
    return statistics.median(times)


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from linewatch.detector.imaging import check_jpeg, decode_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)

    def opencv(d: bytes) -> np.ndarray:
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    by_group: dict[str, list[bytes]] = {}
    for name, data in frames():
        by_group.setdefault(name, []).append(data)
    print(f"{'frames':<26} {'n':>4} {'OpenCV ms':>10} {'strict ms':>10} {'ratio':>6} {'check ms':>9} {'ratio':>6}")
    for name, data in by_group.items():
        for d in data[:5]:
            assert np.array_equal(decode_image(d), opencv(d)), f"{name}: strict decode differs from OpenCV"
        base = per_frame_ms(opencv, data, args.repeats)
        strict = per_frame_ms(decode_image, data, args.repeats)
        check = per_frame_ms(check_jpeg, data, args.repeats)
        print(f"{name:<26} {len(data):>4} {base:>10.2f} {strict:>10.2f} {strict / base:>6.2f} {check:>9.2f} "
              f"{check / base:>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
