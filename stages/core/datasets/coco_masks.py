"""COCO instance masks from their JSON forms, with numpy alone (no pycocotools).

A COCO `segmentation` is one of:
- polygons: `[[x1, y1, x2, y2, ...], ...]` (several parts of one object are OR-ed);
- uncompressed RLE: `{"size": [h, w], "counts": [n0, n1, ...]}` (crowd regions in the
  instances files): run lengths over the pixels in column-major order, starting with a run
  of 0s, alternating 0/1;
- compressed RLE: the same with `counts` as a string (6 bits per character, LEB128-like,
  each count after the second stored as the difference to the count two before).

Polygons are rasterised as pycocotools' `rleFrPoly` does (the boundary is walked at 5x the
resolution, and a pixel is inside when its centre lies below an odd number of boundary
crossings in its column), so the masks are the pixels the official COCO masks hold, not a
close approximation (checked against pycocotools on the real annotations where it is installed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stages.core.errors import FssegError

_SCALE = 5.0  # rleFrPoly's upsampling of the boundary


def rle_decode(
    counts: Sequence[int] | str | bytes, height: int, width: int, *, where: str = "RLE"
) -> np.ndarray:
    """Mask (h, w) bool from RLE `counts` (a list of run lengths or a compressed string)."""
    if not isinstance(counts, str | bytes) and not (
        isinstance(counts, list | tuple)
        and all(isinstance(n, int) and not isinstance(n, bool) for n in counts)
    ):
        raise FssegError(f"{where}: RLE counts must be a list of whole run lengths or a compressed string")
    runs = rle_string_counts(counts, where=where) if isinstance(counts, str | bytes) else counts
    try:
        runs = np.asarray(runs).astype(np.int64)
    except OverflowError:
        raise FssegError(f"{where}: an RLE count is too large for any image") from None
    if runs.ndim != 1 or (runs < 0).any():
        raise FssegError(f"{where}: RLE counts must be a list of non-negative run lengths")
    total = int(runs.sum())
    if total != height * width:
        raise FssegError(
            f"{where}: RLE counts cover {total} pixels but its size is {height}x{width} = {height * width}; "
            f"fix the annotation's size or counts"
        )
    values = np.zeros(len(runs), bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T  # column-major


def rle_string_counts(text: str | bytes, *, where: str = "RLE") -> list[int]:
    """Run lengths of a compressed COCO RLE string (pycocotools' `rleFrString`)."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    if any(not 48 <= b < 112 for b in data):
        raise FssegError(f"{where}: a compressed RLE string holds only the characters '0' to 'o'")
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise FssegError(f"{where}: the compressed RLE string ends in the middle of a count")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def polygon_mask(polygon: Sequence[float], height: int, width: int) -> np.ndarray:
    """Mask (h, w) bool of one polygon `[x1, y1, x2, y2, ...]`, as pycocotools rasterises it."""
    xy = np.asarray(polygon, dtype=np.float64)
    k = len(xy) // 2  # an odd trailing coordinate is ignored, as pycocotools does
    if k == 0:
        return np.zeros((height, width), bool)
    # vertices at 5x, rounded as C's (int)(v + .5) does (truncation towards zero); closed ring
    x = np.trunc(_SCALE * xy[0 : 2 * k : 2] + 0.5).astype(np.int64)
    y = np.trunc(_SCALE * xy[1 : 2 * k : 2] + 0.5).astype(np.int64)
    xs, ys = x, y
    xe, ye = np.roll(x, -1), np.roll(y, -1)
    dx, dy = np.abs(xe - xs), np.abs(ys - ye)
    along_x = dx >= dy
    flip = (along_x & (xs > xe)) | (~along_x & (ys > ye))
    xs, xe = np.where(flip, xe, xs), np.where(flip, xs, xe)
    ys, ye = np.where(flip, ye, ys), np.where(flip, ys, ye)
    steps = np.maximum(dx, dy)  # each edge gives steps + 1 points
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero-length edge: its one point's
        slope = np.where(along_x, (ye - ys) / dx, (xe - xs) / dy)  # other coordinate is never used
    slope = np.nan_to_num(slope)
    edge = np.repeat(np.arange(k), steps + 1)
    d = np.arange(len(edge)) - np.repeat(np.cumsum(steps + 1) - (steps + 1), steps + 1)
    t = np.where(flip[edge], steps[edge] - d, d)
    lead = np.where(along_x[edge], xs[edge], ys[edge]) + t  # the coordinate that steps by 1
    other = np.trunc(np.where(along_x[edge], ys[edge], xs[edge]) + slope[edge] * t + 0.5).astype(np.int64)
    u = np.where(along_x[edge], lead, other)
    v = np.where(along_x[edge], other, lead)
    # where the dense boundary changes column, one crossing at the column's pixel centre
    change = np.nonzero(u[1:] != u[:-1])[0] + 1
    xd = np.where(u[change] < u[change - 1], u[change], u[change] - 1).astype(np.float64)
    xd = (xd + 0.5) / _SCALE - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= width - 1)
    yd = np.minimum(v[change], v[change - 1]).astype(np.float64)
    yd = np.ceil(np.clip((yd + 0.5) / _SCALE - 0.5, 0, height))
    starts = xd[keep].astype(np.int64) * height + yd[keep].astype(np.int64)  # column-major index
    # every crossing toggles inside/outside from its pixel on (rleFrPoly's run lengths); only
    # the span between the first and the last crossing is counted (the object's columns)
    flat = np.zeros(height * width + 1, bool)
    if starts.size:
        lo, hi = int(starts.min()), int(starts.max())
        toggles = np.bincount(starts - lo, minlength=hi - lo + 1)
        flat[lo : hi + 1] = (np.cumsum(toggles) & 1).astype(bool)
        flat[hi + 1 :] = flat[hi]
    return flat[: height * width].reshape(width, height).T


def segmentation_mask(
    segmentation: object, height: int, width: int, *, where: str = "annotation"
) -> np.ndarray:
    """Mask (h, w) bool of a COCO `segmentation` (polygons, or RLE with list or string counts)."""
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list | tuple) and len(size) == 2) or counts is None:
            raise FssegError(f"{where}: an RLE segmentation needs 'size': [h, w] and 'counts'")
        if (int(size[0]), int(size[1])) != (height, width):
            raise FssegError(
                f"{where}: RLE size {size[0]}x{size[1]} (h x w) differs from its image's {height}x{width}"
            )
        return rle_decode(counts, height, width, where=where)
    if isinstance(segmentation, list):
        mask = np.zeros((height, width), bool)
        for part in segmentation:
            if (
                not isinstance(part, list | tuple)
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in part)
                or not np.isfinite(np.asarray(part, dtype=np.float64)).all()
            ):
                raise FssegError(f"{where}: polygons must be lists of numbers [x1, y1, x2, y2, ...]")
            mask |= polygon_mask(part, height, width)
        return mask
    raise FssegError(f"{where}: segmentation must be a list of polygons or an RLE dict")
