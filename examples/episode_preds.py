"""Episode files and per-episode predictions for the IMR experiments (examples/*_imr.sh).

python examples/episode_preds.py cam EPISODES CAMS DEST     each query's own CAM mask as
    DEST/<episode:05d>.png (what `fsseg evaluate --task fss --pred DEST` reads)
python examples/episode_preds.py step RUN T DEST            a refine run's step T query masks
    (RUN/steps/tT/query/<episode>_s0.png) as DEST/<episode>.png
python examples/episode_preds.py with-cams EPISODES CAMS DEST   the episodes of EPISODES whose
    query and supports all have a CAM in the clip-cam artifact CAMS, written to DEST
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path


def cam(episodes: Path, cams: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for i, ep in enumerate(json.loads(episodes.read_text())["episodes"]):
        shutil.copyfile(cams / "masks" / f"{ep['query']}__{ep['class']}.png", dest / f"{i:05d}.png")


def step(run: Path, t: str, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted((run / "steps" / f"t{t}" / "query").glob("*_s0.png")):
        shutil.copyfile(f, dest / f"{f.name.split('_')[0]}.png")


def with_cams(episodes: Path, cams: Path, dest: Path) -> None:
    doc = json.loads(episodes.read_text())
    have = {p.stem for p in (cams / "cams").iterdir()}
    doc["episodes"] = [
        e for e in doc["episodes"] if all(f"{i}__{e['class']}" in have for i in [e["query"], *e["support"]])
    ]
    dest.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    command, a, b, c = sys.argv[1:]
    if command == "step":
        step(Path(a), b, Path(c))
    else:
        {"cam": cam, "with-cams": with_cams}[command](Path(a), Path(b), Path(c))
