"""`fsseg report`: one static HTML page describing every artifact under a run folder.

Reads:  every `manifest.json` under RUN_DIR (artifacts of any stage; `report/` itself is skipped).
Writes: `RUN_DIR/report/index.html` and `RUN_DIR/report/img/` (downscaled copies of the pictures),
        replaced atomically as a whole. No server, no CDN, no JavaScript library: the page and its
        pictures are plain local files.
Content: the chain of stages in creation order with their parameters, inputs (linked to the
        artifact that made them when it is in the run folder) and timings; metrics tables and
        per-class bar charts (inline SVG); training histories; a gallery per artifact (overlays of
        clip-cam and refine, previews of pseudo-label, loss and metric charts).
"""

from __future__ import annotations

import csv
import html
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages import __version__
from stages.core.artifacts import is_temp_file
from stages.core.errors import FssegError

GALLERY = {  # kind -> (folder of pictures, caption)
    "cams": ("overlays", "CAM heat map and mask outline"),
    "refine": ("overlays", "support and query masks, step by step"),
    "finetune": ("overlays", "query masks (ad-hoc mode)"),
    "pseudo-label": ("preview", "image | classes | segments"),
    "panoptic-pred": ("preview", "image | classes | segments"),
}
CHARTS = ("loss.png", "per_class.png", "confusion_matrix.png", "pq_breakdown.png")
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.chain{display:flex;flex-wrap:wrap;gap:.4rem;align-items:center}.chain a{background:#eef3fb;border:1px solid #b8c8e6;
border-radius:4px;padding:.2rem .5rem;text-decoration:none;color:#1a3d7c}
.gallery{display:flex;flex-wrap:wrap;gap:.5rem}.gallery figure{margin:0;max-width:340px}
.gallery img,.chart img{max-width:100%;border:1px solid #ddd}figcaption{font-size:12px;color:#555}
details{margin:.3rem 0}code{background:#f4f4f4;padding:0 .2rem}img.broken{outline:3px solid #d33}
"""
# After loading, count the pictures that loaded and outline the ones that did not (moved or deleted
# files); the counts land on <body data-images-loaded=... data-images-broken=...>.
CHECK_IMAGES = """<script>
window.addEventListener("load", function () {
  var ok = 0, broken = 0;
  document.querySelectorAll("img").forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { ok++; } else { broken++; img.classList.add("broken"); }
  });
  document.body.dataset.imagesLoaded = ok;
  document.body.dataset.imagesBroken = broken;
});
</script>"""


def _manifests(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(run_dir.rglob("manifest.json")):
        if "report" in path.relative_to(run_dir).parts[:1]:
            continue
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            continue
        if isinstance(manifest, dict) and "kind" in manifest:
            found.append((path.stat().st_mtime_ns, path.parent, manifest))
    return [
        (folder, manifest) for _, folder, manifest in sorted(found, key=lambda item: (item[0], str(item[1])))
    ]


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, list | dict):
        text = json.dumps(value)
        return _esc(text if len(text) < 160 else text[:157] + "...")
    return _esc(value)


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return ""
    columns = columns or list(rows[0])
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_fmt(r.get(c))}</td>'
            if isinstance(r.get(c), int | float)
            else f"<td>{_fmt(r.get(c))}</td>"
            for c in columns
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _bars(rows: list[dict[str, Any]], key: str, label: str) -> str:
    """A horizontal bar chart (inline SVG) of `key` (0-100) per row's name."""
    rows = [r for r in rows if isinstance(r.get(key), int | float)]
    if not rows:
        return ""
    height, width, left = 18, 640, 150
    parts = [f'<svg class="bars" width="{width + left + 60}" height="{height * len(rows) + 24}" role="img" '
             f'aria-label="{_esc(label)} per class">']  # fmt: skip
    for i, r in enumerate(rows):
        y, value = 20 + i * height, float(r[key])
        parts.append(
            f'<text x="{left - 6}" y="{y + 12}" text-anchor="end" font-size="12">{_esc(r.get("name"))}</text>'
        )
        parts.append(
            f'<rect x="{left}" y="{y}" width="{width * max(value, 0) / 100:.1f}" height="{height - 4}" fill="#4a7bd0"/>'
        )
        parts.append(
            f'<text x="{left + width * max(value, 0) / 100 + 4:.1f}" y="{y + 12}" font-size="12">{value:.1f}</text>'
        )
    parts.append(f'<text x="{left}" y="12" font-size="12" font-weight="bold">{_esc(label)} (%)</text></svg>')
    return "".join(parts)


def _picture(src: Path, dest_dir: Path, name: str, width: int) -> str | None:
    """A downscaled JPEG copy of `src` in `dest_dir`; its path relative to the page."""
    from PIL import Image

    try:
        with Image.open(src) as im:
            im = im.convert("RGB")
            if im.width > width:
                im = im.resize((width, round(im.height * width / im.width)))
            im.save(dest_dir / name, format="JPEG", quality=85)
    except OSError:
        return None
    return f"img/{name}"


def _per_class(folder: Path) -> list[dict[str, Any]]:
    path = folder / "per_class.csv"
    if not path.is_file():
        return []
    rows = []
    with path.open() as f:
        for row in csv.DictReader(f):
            rows.append({k: _number(v) for k, v in row.items()})
    return rows


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _section(index: int, folder: Path, manifest: dict, run_dir: Path, by_path: dict[str, int], img_dir: Path,
             gallery_size: int) -> str:  # fmt: skip
    kind, rel = manifest["kind"], folder.relative_to(run_dir)
    out = [f'<section id="a{index}"><h2>{index + 1}. {_esc(manifest.get("stage", kind))} '
           f'<small>({_esc(kind)})</small> &mdash; <code>{_esc(rel)}</code></h2>']  # fmt: skip
    facts = {
        "created": manifest.get("created_utc"), "wall time (s)": manifest.get("wall_time_s"),
        "device": manifest.get("device"), "seed": manifest.get("seed"),
        "fsseg": manifest.get("fsseg_version"), "processes": manifest.get("world_size"),
    }  # fmt: skip
    out.append(_table([{k: v for k, v in facts.items() if v is not None}]))
    inputs = []
    for entry in manifest.get("inputs") or []:
        path = str(entry.get("path", ""))
        owners = [f for f in by_path if Path(path).resolve().is_relative_to(f)]
        target = by_path[max(owners, key=len)] if owners else None
        link = f' &larr; <a href="#a{target}">step {target + 1}</a>' if target is not None else ""
        inputs.append(f"<li><code>{_esc(path)}</code>{link}</li>")
    if inputs:
        out.append(f"<p>Inputs:</p><ul>{''.join(inputs)}</ul>")
    params = dict(manifest.get("params") or {})
    for group in ("resolved", "settings"):  # what the run settled, and what may change on a rerun
        params |= {f"{group}.{k}": v for k, v in (manifest.get(group) or {}).items()}
    out.append(f"<details><summary>{len(params)} parameters</summary>"
               + _table([{"parameter": k, "value": v} for k, v in sorted(params.items())]) + "</details>")  # fmt: skip
    if kind == "metrics":
        metrics = (
            json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
        )
        flat = {k: v for k, v in metrics.items() if isinstance(v, int | float | str) and k != "headline"}
        out.append("<p>Metrics:</p>" + _table([flat]))
        rows = _per_class(folder)
        if rows:
            key = next((k for k in ("iou", "pq") if k in rows[0]), None)
            out.append(f"<details open><summary>per class</summary>{_table(rows)}</details>")
            if key:
                out.append(_bars(rows, key, key.upper() if key == "pq" else "IoU"))
    history = (manifest.get("outputs") or {}).get("history")
    if isinstance(history, list) and history and isinstance(history[0], dict):
        out.append(
            f"<details><summary>training history ({len(history)} epochs)</summary>{_table(history)}</details>"
        )
    charts = []
    for chart in CHARTS:
        if (folder / chart).is_file():
            src = _picture(folder / chart, img_dir, f"a{index}_{chart[:-4]}.jpg", 900)
            if src:
                charts.append(f'<figure class="chart"><img src="{src}" alt="{_esc(chart)}"></figure>')
    out.extend(charts)
    if kind in GALLERY and (folder / GALLERY[kind][0]).is_dir():
        pictures = sorted(p for p in (folder / GALLERY[kind][0]).glob("*.jpg") if not is_temp_file(p))
        figures = []
        for n, pic in enumerate(pictures[:gallery_size]):
            src = _picture(pic, img_dir, f"a{index}_{n}.jpg", 900 if kind != "cams" else 340)
            if src:
                figures.append(f'<figure><img src="{src}" alt="{_esc(pic.stem)}" loading="eager">'
                               f"<figcaption>{_esc(pic.stem)}</figcaption></figure>")  # fmt: skip
        shown = f"{len(figures)} of {len(pictures)}" if len(pictures) > len(figures) else f"{len(figures)}"
        out.append(
            f'<p>Gallery ({shown}): {GALLERY[kind][1]}</p><div class="gallery">{"".join(figures)}</div>'
        )
    return "".join(out) + "</section>"


def run_report(
    run_dir: str | Path, *, gallery_size: int = 12, on_progress: Callable[..., None] | None = None
) -> Path:
    """Build RUN_DIR/report/index.html; returns its path."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise FssegError(f"run folder {run_dir} does not exist; pass a folder holding fsseg artifacts")
    artifacts = _manifests(run_dir)
    if not artifacts:
        raise FssegError(
            f"no fsseg artifacts (folders with manifest.json) under {run_dir}; run a stage into it first"
        )
    final = run_dir / "report"
    if final.exists() and not (final / "index.html").is_file():
        raise FssegError(
            f"{final} exists but is not an fsseg report; move it away, then run fsseg report again"
        )
    staging = run_dir / f".report-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "img").mkdir(parents=True)
    except OSError as err:
        raise FssegError(
            f"cannot write the report into {run_dir} ({err.strerror or type(err).__name__}); make the folder "
            f"writable, or copy the run folder somewhere writable and report on the copy"
        ) from None
    try:
        by_path = {str(folder): i for i, (folder, _) in enumerate(artifacts)}
        sections = []
        for i, (folder, manifest) in enumerate(artifacts):
            sections.append(_section(i, folder, manifest, run_dir, by_path, staging / "img", gallery_size))
            if on_progress is not None:
                on_progress(i + 1, len(artifacts))
        chain = "".join(
            f'<a href="#a{i}">{i + 1}. {_esc(m.get("stage", m["kind"]))}</a>'
            for i, (_, m) in enumerate(artifacts)
        )
        page = (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fsseg report: {_esc(run_dir.name)}'
            f"</title><style>{STYLE}</style></head><body><h1>fsseg report: <code>{_esc(run_dir.name)}</code></h1>"
            f"<p>{len(artifacts)} artifacts under <code>{_esc(run_dir)}</code>, in the order they were made "
            f'(fsseg {__version__}).</p><div class="chain">{chain}</div>{"".join(sections)}{CHECK_IMAGES}</body></html>'
        )
        (staging / "index.html").write_text(page)
        old = run_dir / f".report-old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / "index.html"
