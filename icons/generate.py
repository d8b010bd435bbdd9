#!/usr/bin/env python3
"""Draws the Lookit Local app icon (a rounded teal square with an eye) as RGBA PNGs.

Pure Python (zlib + struct) so regenerating the icons needs nothing installed:
    python3 icons/generate.py
"""
import math
import struct
import zlib
from pathlib import Path

TEAL = (17, 122, 139)
WHITE = (255, 255, 255)
INK = (20, 33, 43)


def coverage(distance: float) -> float:
    """Anti-aliasing: 1 inside an edge, 0 outside, linear across one pixel."""
    return max(0.0, min(1.0, 0.5 - distance))


def pixel(x: float, y: float) -> tuple:
    # Coordinates in [0, 1]; shapes are signed-distance functions in pixels of a 1-unit icon.
    def rounded_square(px, py, half, radius):
        qx, qy = abs(px - 0.5) - half + radius, abs(py - 0.5) - half + radius
        outside = math.hypot(max(qx, 0), max(qy, 0))
        return outside + min(max(qx, qy), 0) - radius

    def ellipse_eye(px, py):
        # An eye: intersection of two circles, wide and flat.
        d1 = math.hypot(px - 0.5, py - 0.5 + 0.33) - 0.58
        d2 = math.hypot(px - 0.5, py - 0.5 - 0.33) - 0.58
        return max(d1, d2)

    return rounded_square(x, y, 0.46, 0.11), ellipse_eye(x, y), math.hypot(x - 0.5, y - 0.5) - 0.14, math.hypot(x - 0.5, y - 0.5) - 0.065


def render(size: int) -> bytes:
    rows = []
    for j in range(size):
        row = bytearray([0])
        for i in range(size):
            x, y = (i + 0.5) / size, (j + 0.5) / size
            square, eye, iris, pupil = (d * size for d in pixel(x, y))
            a = coverage(square)
            color = list(TEAL)
            for shape, col in ((eye, WHITE), (iris, TEAL), (pupil, INK)):
                c = coverage(shape)
                color = [round(color[k] * (1 - c) + col[k] * c) for k in range(3)]
            row += bytes(color) + bytes([round(a * 255)])
        rows.append(bytes(row))
    raw = zlib.compress(b"".join(rows), 9)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


if __name__ == "__main__":
    here = Path(__file__).parent
    for name, size in (("32x32.png", 32), ("128x128.png", 128), ("128x128@2x.png", 256), ("icon.png", 512)):
        (here / name).write_bytes(render(size))
        print("wrote", here / name)
