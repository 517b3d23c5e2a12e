"""Copy a few real photos that scikit-image ships into a folder per label, for `make demo`.

Usage: python examples/demo_photos.py OUT_DIR
Writes OUT_DIR/cat/chelsea.png and OUT_DIR/motorcycle/motorcycle_{left,right}.png (the photos come
from scikit-image's bundled data folder; nothing is downloaded).
"""

import shutil
import sys
from pathlib import Path

import skimage

DATA = Path(skimage.__file__).parent / "data"
PHOTOS = {"cat": ["chelsea.png"], "motorcycle": ["motorcycle_left.png", "motorcycle_right.png"]}

if __name__ == "__main__":
    out = Path(sys.argv[1])
    for label, names in PHOTOS.items():
        (out / label).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(DATA / name, out / label / name)
    print(f"demo photos in {out}: {', '.join(f'{k}/ ({len(v)})' for k, v in PHOTOS.items())}")
