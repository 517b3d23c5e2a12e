"""Metric accumulators with summable state.

Each accumulator is updated image by image (or episode by episode) and two of them add up
(`a + b`), so per-worker or per-rank partial results combine exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ConfusionMatrix:
    """Semantic segmentation: `matrix[gt, pred]` pixel counts over `num_classes` classes.

    Pixels whose ground truth is `ignore_index` (or any id >= num_classes, when the caller
    chooses to let them through) are not counted.
    """

    num_classes: int
    matrix: np.ndarray | None = None
    missed: np.ndarray | None = None  # ground-truth pixels with no prediction at all, per class

    def __post_init__(self) -> None:
        if self.matrix is None:
            self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        if self.missed is None:
            self.missed = np.zeros(self.num_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray, ignore_index: int | None = None) -> ConfusionMatrix:
        """Add one prediction / ground-truth pair (same shape, integer ids); returns self."""
        n = self.num_classes
        valid = gt < n
        if ignore_index is not None:
            valid &= gt != ignore_index
        unassigned = valid & (pred >= n)  # a prediction of "none of these classes": a miss, not a class
        if unassigned.any():
            self.missed += np.bincount(gt[unassigned].astype(np.int64), minlength=n)
            valid &= ~unassigned
        codes = gt[valid].astype(np.int64) * n + pred[valid].astype(np.int64)
        self.matrix += np.bincount(codes, minlength=n * n).reshape(n, n)
        return self

    def add_missed(self, gt: np.ndarray, ignore_index: int | None = None) -> ConfusionMatrix:
        """Count a ground truth whose prediction is missing: every scored pixel is a miss."""
        valid = gt < self.num_classes
        if ignore_index is not None:
            valid &= gt != ignore_index
        self.missed += np.bincount(gt[valid].astype(np.int64), minlength=self.num_classes)
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if other.num_classes != self.num_classes:
            raise ValueError("cannot add confusion matrices of different sizes")
        return ConfusionMatrix(self.num_classes, self.matrix + other.matrix, self.missed + other.missed)

    @property
    def true_positives(self) -> np.ndarray:
        return np.diag(self.matrix)

    @property
    def gt_pixels(self) -> np.ndarray:
        return self.matrix.sum(axis=1) + self.missed

    @property
    def pred_pixels(self) -> np.ndarray:
        return self.matrix.sum(axis=0)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class absent from both prediction and ground truth."""
        union = self.gt_pixels + self.pred_pixels - self.true_positives
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, self.true_positives / np.maximum(union, 1), np.nan)

    def class_accuracy(self) -> np.ndarray:
        """Per-class recall (TP / ground-truth pixels); NaN for classes absent from the ground truth."""
        gt = self.gt_pixels
        return np.where(gt > 0, self.true_positives / np.maximum(gt, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that occur in the prediction or the ground truth."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum() + self.missed.sum()
        return float(self.true_positives.sum() / total) if total else float("nan")

    def mean_class_accuracy(self) -> float:
        acc = self.class_accuracy()
        return float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")


@dataclass
class FssMeter:
    """Few-shot segmentation, HSNet's protocol: foreground and background intersection and union
    summed per class over episodes.

    - `miou`: mean over classes (that had episodes) of summed fg intersection / summed fg union;
    - `fb_iou`: mean over {background, foreground} of intersection / union summed over all classes;
    - `episode_mean_fg_iou`: the example-wise average of per-episode foreground IoU (another
      number some papers report; named so that it is not mistaken for mIoU).
    Pixels equal to `ignore_index` in the ground truth are not counted.
    """

    inter: dict[int, np.ndarray] | None = None  # class -> [bg, fg] intersection
    union: dict[int, np.ndarray] | None = None
    episode_ious: list[float] | None = None

    def __post_init__(self) -> None:
        self.inter = {} if self.inter is None else self.inter
        self.union = {} if self.union is None else self.union
        self.episode_ious = [] if self.episode_ious is None else self.episode_ious

    def update(self, pred: np.ndarray, gt: np.ndarray, class_id: int, ignore_index: int = 255) -> float:
        """Add one episode: binary `pred` (1 = fg), `gt` with 1 = fg, 0 = bg, ignore. Returns fg IoU."""
        valid = gt != ignore_index
        p, g = pred.astype(bool) & valid, (gt == 1) & valid
        pb, gb = ~pred.astype(bool) & valid, (gt == 0) & valid
        inter = np.array([(pb & gb).sum(), (p & g).sum()], np.int64)
        union = np.array([(pb | gb).sum(), (p | g).sum()], np.int64)
        self.inter[class_id] = self.inter.get(class_id, np.zeros(2, np.int64)) + inter
        self.union[class_id] = self.union.get(class_id, np.zeros(2, np.int64)) + union
        iou = float(inter[1] / union[1]) if union[1] else float("nan")
        self.episode_ious.append(iou)
        return iou

    def __add__(self, other: FssMeter) -> FssMeter:
        keys = set(self.inter) | set(other.inter)
        zero = np.zeros(2, np.int64)
        return FssMeter(
            {k: self.inter.get(k, zero) + other.inter.get(k, zero) for k in keys},
            {k: self.union.get(k, zero) + other.union.get(k, zero) for k in keys},
            self.episode_ious + other.episode_ious,
        )

    def class_iou(self) -> dict[int, float]:
        return {
            c: float(self.inter[c][1] / self.union[c][1]) if self.union[c][1] else float("nan")
            for c in sorted(self.inter)
        }

    def miou(self) -> float:
        values = [v for v in self.class_iou().values() if not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")

    def fb_iou(self) -> float:
        inter = sum(self.inter.values())
        union = sum(self.union.values())
        return float(np.mean(inter / np.maximum(union, 1)))

    def episode_mean_fg_iou(self) -> float:
        values = [v for v in self.episode_ious if not np.isnan(v)]
        return float(np.mean(values)) if values else float("nan")


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def gfss_summary(base_ious: np.ndarray, novel_ious: np.ndarray) -> dict[str, float]:
    """Base mIoU, novel mIoU, their mean and harmonic mean (NaN classes left out)."""
    base = float(np.nanmean(base_ious)) if np.isfinite(base_ious).any() else float("nan")
    novel = float(np.nanmean(novel_ious)) if np.isfinite(novel_ious).any() else float("nan")
    return {
        "base_miou": base,
        "novel_miou": novel,
        "mean_miou": (base + novel) / 2,
        "harmonic_miou": harmonic_mean(base, novel),
    }


class SegmentListError(ValueError):
    """An id map and its segment list disagree: a segment id in the map has no category
    (`problem` "unlisted"), or a listed predicted segment has no pixel ("absent")."""

    def __init__(self, side: str, segment_id: int, problem: str):
        self.side, self.segment_id, self.problem = side, int(segment_id), problem
        what = (
            "is in the id map but has no category" if problem == "unlisted" else "is listed but has no pixel"
        )
        super().__init__(f"{side} segment id {self.segment_id} {what}")


@dataclass
class PanopticImage:
    """One image's panoptic segmentation: a segment id map and each segment's category / crowd flag.

    `ids` (H, W) int: segment ids, 0 = void (unlabelled). `categories[id]` is the category of
    segment `id`; `crowd` holds the ids of crowd segments (ground truth only). `crowd_of` maps a
    category to the one crowd segment whose pixels excuse an unmatched prediction of that
    category: the reference evaluators (panopticapi, cityscapesScripts) keep the last crowd
    segment listed per category, so a reader of a segment list passes it in list order; when
    not given, the highest crowd id of each category is taken.
    """

    ids: np.ndarray
    categories: dict[int, int]
    crowd: frozenset[int] = frozenset()
    crowd_of: dict[int, int] | None = None

    def __post_init__(self) -> None:
        if self.crowd_of is None:
            self.crowd_of = {self.categories[i]: i for i in sorted(self.crowd) if i in self.categories}


@dataclass
class PanopticQuality:
    """PQ, SQ, RQ as the COCO and Cityscapes panoptic evaluators define them.

    Per image: a ground-truth and a predicted segment of the same category match when their
    IoU > 0.5, where the union leaves out the predicted segment's pixels on ground-truth void;
    crowd ground-truth segments never match; an unmatched prediction is not a false positive
    when more than half of it lies on void plus the crowd segment of its own category (only
    one per category, `PanopticImage.crowd_of`: with several crowd segments of a category the
    reference evaluators count the last one listed). Pair counting is one `np.bincount` over
    (gt segment, predicted segment) index pairs.
    """

    stats: dict[int, np.ndarray] | None = None  # category -> [tp, fp, fn, iou_sum]

    def __post_init__(self) -> None:
        self.stats = {} if self.stats is None else self.stats

    def _add(self, category: int, tp: int = 0, fp: int = 0, fn: int = 0, iou: float = 0.0) -> None:
        row = self.stats.setdefault(int(category), np.zeros(4, np.float64))
        row += (tp, fp, fn, iou)

    @staticmethod
    def _index(image: PanopticImage) -> tuple[np.ndarray, np.ndarray]:
        """(segment ids with 0 first, per-pixel index into them); index len(ids) = an unknown id."""
        known = np.array([0, *sorted(i for i in image.categories if i != 0)], dtype=np.int64)
        flat = image.ids
        if known[-1] < (
            1 << 22
        ):  # one gather through a lookup table (ids are small in Cityscapes and COCO use)
            dtype = np.uint16 if len(known) < 65535 else np.int32
            lut = np.full(
                int(known[-1]) + 2, len(known), dtype
            )  # larger ids clip onto the last, unknown entry
            lut[known] = np.arange(len(known), dtype=dtype)
            return known, np.take(lut, flat, mode="clip")
        index = np.minimum(np.searchsorted(known, flat), len(known) - 1)
        return known, np.where(known[index] == flat, index, len(known))

    def update(
        self, gt: PanopticImage, pred: PanopticImage, *, require_listed: bool = False
    ) -> PanopticQuality:
        """Add one image. Raises `SegmentListError` for a segment id in either map without a
        category and, with `require_listed`, for a predicted segment listed in
        `pred.categories` without a pixel (the reference evaluators reject both)."""
        if gt.ids.shape != pred.ids.shape:
            raise ValueError(f"ground truth is {gt.ids.shape} but prediction is {pred.ids.shape}")
        g_ids, g_index = self._index(gt)
        p_ids, p_index = self._index(pred)
        ng, npred = len(g_ids) + 1, len(p_ids) + 1  # + the unknown-id slot
        if (
            ng * npred <= 65536
        ):  # uint16 pair codes; np.unique's hashing beats bincount on long runs of one code
            codes, hits = np.unique(
                g_index.astype(np.uint16) * np.uint16(npred) + p_index, return_counts=True
            )
            counts = np.zeros(ng * npred, np.int64)
            counts[codes] = hits
        else:
            counts = np.bincount((g_index.astype(np.int64) * npred + p_index).ravel(), minlength=ng * npred)
        counts = counts.reshape(ng, npred)
        for what, ids, image, unknown in (
            ("ground-truth", g_ids, gt, counts[-1].sum()),
            ("predicted", p_ids, pred, counts[:, -1].sum()),
        ):
            if unknown:
                stray = np.setdiff1d(np.unique(image.ids), ids)
                raise SegmentListError(what, stray[0], "unlisted")
        counts = counts[:-1, :-1]
        g_area, p_area = counts.sum(1), counts.sum(0)
        if require_listed and (p_area[1:] == 0).any():
            raise SegmentListError("predicted", p_ids[1:][p_area[1:] == 0][0], "absent")
        g_cat = np.array([-1] + [gt.categories[i] for i in g_ids[1:]])
        p_cat = np.array([-2] + [pred.categories[i] for i in p_ids[1:]])
        g_crowd = np.array([False] + [i in gt.crowd for i in g_ids[1:]])
        g_present, p_present = g_area > 0, p_area > 0
        g_present[0] = p_present[0] = False

        inter = counts.astype(np.float64)
        union = p_area[None, :] + g_area[:, None] - inter - counts[0][None, :]
        candidate = (inter > 0) & (g_cat[:, None] == p_cat[None, :]) & ~g_crowd[:, None]
        candidate[0, :] = candidate[:, 0] = False
        iou = np.where(candidate, inter / np.maximum(union, 1), 0.0)
        matched = iou > 0.5  # at most one match per row and column when IoU > 0.5
        for g, p in zip(*np.nonzero(matched), strict=True):
            self._add(g_cat[g], tp=1, iou=float(iou[g, p]))
        g_matched, p_matched = matched.any(1), matched.any(0)
        for g in np.nonzero(g_present & ~g_matched & ~g_crowd)[0]:
            self._add(g_cat[g], fn=1)
        crowd_row = {  # category -> row of its one counting crowd segment (listed, maybe no pixel)
            int(c): int(np.searchsorted(g_ids, s))
            for c, s in gt.crowd_of.items()
            if s in gt.categories and s != 0
        }
        for p in np.nonzero(p_present & ~p_matched)[0]:
            row = crowd_row.get(int(p_cat[p]))
            ignored = counts[0, p] + (counts[row, p] if row is not None else 0)
            if ignored / p_area[p] > 0.5:
                continue
            self._add(p_cat[p], fp=1)
        return self

    def __add__(self, other: PanopticQuality) -> PanopticQuality:
        merged = {k: v.copy() for k, v in self.stats.items()}
        for k, v in other.stats.items():
            merged[k] = merged.get(k, np.zeros(4)) + v
        return PanopticQuality(merged)

    def results(self, categories: dict[int, bool]) -> dict:
        """PQ/SQ/RQ for all, things, stuff and per category; `categories` maps id -> is_thing.

        Averages run over the categories with at least one TP, FP or FN; others are reported
        as None per class and left out.
        """
        per_class: dict[int, dict | None] = {}
        for cat in categories:
            tp, fp, fn, iou = self.stats.get(cat, np.zeros(4))
            if tp + fp + fn == 0:
                per_class[cat] = None
                continue
            denom = tp + 0.5 * fp + 0.5 * fn
            per_class[cat] = {
                "pq": iou / denom,
                "sq": iou / tp if tp else 0.0,
                "rq": tp / denom,
                "tp": int(tp),
                "fp": int(fp),
                "fn": int(fn),
            }
        out = {"per_class": per_class}
        for name, want in (("all", None), ("things", True), ("stuff", False)):
            rows = [
                per_class[c]
                for c, thing in categories.items()
                if per_class[c] and (want is None or thing == want)
            ]
            out[name] = {
                k: float(np.mean([r[k] for r in rows])) if rows else float("nan") for k in ("pq", "sq", "rq")
            }
            out[name]["n"] = len(rows)
        return out
