"""Label text -> ImageNet-1k classes, for the offline `imagenet` CAM backend.

The table covers the class names of PASCAL VOC, COCO and CamVid (in their own spellings and
in plain English). Any other label is matched against the ImageNet class names: an exact
name, else every class whose name contains the label as a whole word ("shark" -> great white
shark, tiger shark). Labels with no counterpart (person, sky, road, giraffe, ...) get
an error that points to the CLIP backend. ImageNet's "kite" is a bird of prey, so COCO's
kite (the toy) is deliberately absent.
"""

from __future__ import annotations

import re
from functools import lru_cache

from stages.core.errors import FssegError

DOGS = list(range(151, 269))
BIRDS = [*range(7, 25), *range(80, 101), *range(127, 147)]
CARS = [
    "sports car",
    "convertible",
    "cab",
    "jeep",
    "limousine",
    "minivan",
    "Model T",
    "racer",
    "beach wagon",
    "ambulance",
    "police van",
    "pickup",
]
BICYCLES = ["mountain bike", "bicycle-built-for-two"]
BOATS = [
    "canoe",
    "speedboat",
    "lifeboat",
    "fireboat",
    "gondola",
    "yawl",
    "catamaran",
    "trimaran",
    "schooner",
    "container ship",
    "liner",
    "aircraft carrier",
    "pirate",
]
BOTTLES = [
    "beer bottle",
    "pop bottle",
    "water bottle",
    "wine bottle",
    "pill bottle",
    "whiskey jug",
    "water jug",
]
CATS = ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
CHAIRS = ["barber chair", "folding chair", "rocking chair", "throne"]
TRAINS = [
    "passenger car",
    "electric locomotive",
    "steam locomotive",
    "bullet train",
    "freight car",
    "streetcar",
]
SCREENS = ["television", "monitor", "screen"]
MOTORBIKES = ["moped", "motor scooter"]

# label (lower case) -> ImageNet class names or indices
TABLE: dict[str, list[str | int]] = {
    # PASCAL VOC (and the plain-English forms of its names)
    "aeroplane": ["airliner", "warplane"], "airplane": ["airliner", "warplane"],
    "bicycle": BICYCLES, "bird": BIRDS, "boat": BOATS, "bottle": BOTTLES,
    "bus": ["school bus", "trolleybus", "minibus"], "car": CARS, "cat": CATS, "chair": CHAIRS,
    "cow": ["ox", "water buffalo", "bison"], "diningtable": ["dining table"], "dining table": ["dining table"],
    "dog": DOGS, "horse": ["sorrel"], "motorbike": MOTORBIKES, "motorcycle": MOTORBIKES,
    "pottedplant": ["pot"], "potted plant": ["pot"], "sheep": ["ram", "bighorn"], "sofa": ["studio couch"],
    "couch": ["studio couch"], "train": TRAINS, "tvmonitor": SCREENS, "tv": SCREENS, "monitor": SCREENS,
    # COCO (the ones with an ImageNet counterpart)
    "truck": ["trailer truck", "tow truck", "garbage truck", "fire engine", "moving van", "pickup"],
    "traffic light": ["traffic light"], "stop sign": ["street sign"], "parking meter": ["parking meter"],
    "bench": ["park bench"], "elephant": ["Indian elephant", "African elephant", 101],
    "bear": ["brown bear", "American black bear", "ice bear", "sloth bear"], "zebra": ["zebra"],
    "backpack": ["backpack"], "umbrella": ["umbrella"], "handbag": ["purse"], "tie": ["Windsor tie", "bow tie"],
    "skis": ["ski"], "sports ball": ["soccer ball", "basketball", "volleyball", "tennis ball", "golf ball",
                                     "baseball", "rugby ball", "ping-pong ball", "croquet ball"],
    "tennis racket": ["racket"], "wine glass": ["goblet", "red wine"], "cup": ["cup", "coffee mug"],
    "spoon": ["wooden spoon"], "bowl": ["mixing bowl", "soup bowl"], "banana": ["banana"],
    "apple": ["Granny Smith"], "orange": ["orange"], "broccoli": ["broccoli"], "hot dog": ["hotdog"],
    "pizza": ["pizza"], "bed": ["four-poster"], "toilet": ["toilet seat"], "laptop": ["laptop", "notebook"],
    "mouse": ["mouse"], "remote": ["remote control"], "keyboard": ["computer keyboard", "typewriter keyboard"],
    "cell phone": ["cellular telephone"], "microwave": ["microwave"], "oven": ["stove"], "toaster": ["toaster"],
    "sink": ["washbasin"], "refrigerator": ["refrigerator"], "book": ["book jacket"],
    "clock": ["analog clock", "wall clock", "digital clock"], "vase": ["vase"], "teddy bear": ["teddy"],
    "hair drier": ["hand blower"],
    # CamVid (the ones with an ImageNet counterpart)
    "pole": ["pole"], "signsymbol": ["street sign", "traffic light"], "sign": ["street sign", "traffic light"],
    "fence": ["picket fence", "chainlink fence", "worm fence"], "bicyclist": BICYCLES,
    # a few common extras
    "tower": ["water tower", "beacon", "obelisk", "bell cote"], "eiffel tower": ["water tower", "beacon", "obelisk"],
    "lighthouse": ["beacon"], "bridge": ["steel arch bridge", "suspension bridge", "viaduct"],
}  # fmt: skip

NO_COUNTERPART = {
    "person",
    "people",
    "pedestrian",
    "sky",
    "building",
    "road",
    "pavement",
    "tree",
    "background",
    "giraffe",
    "fire hydrant",
    "suitcase",
    "frisbee",
    "snowboard",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "fork",
    "knife",
    "sandwich",
    "carrot",
    "donut",
    "cake",
    "scissors",
    "toothbrush",
}


@lru_cache(maxsize=1)
def imagenet_categories() -> tuple[str, ...]:
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_classes(label: str) -> list[int]:
    """ImageNet-1k indices whose logits sum to the score of `label`; FssegError if there are none."""
    categories = imagenet_categories()
    key = " ".join(label.lower().replace("_", " ").split())
    if key in TABLE:
        return sorted({e if isinstance(e, int) else categories.index(e) for e in TABLE[key]})
    lowered = [c.lower() for c in categories]
    if key in lowered and key not in NO_COUNTERPART:
        return [lowered.index(key)]
    pattern = re.compile(rf"\b{re.escape(key)}\b")
    found = [i for i, c in enumerate(lowered) if pattern.search(c)]
    if found and key not in NO_COUNTERPART:
        return found
    raise FssegError(
        f"label {label!r} has no ImageNet-1k counterpart for the offline imagenet backend; use --backend clip "
        f"(CLIP weights: see `fsseg info`), or a label from the table in the README"
    )
