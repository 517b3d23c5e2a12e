"""Reading and writing the pixels fsseg deals in.

- `read_image`: any common image (JPEG, PNG incl. palette and 16-bit, WebP, TIFF, BMP;
  grayscale, RGBA; EXIF orientation applied) -> RGB uint8 array (H, W, 3).
- `read_label` / `write_label`: single-channel label maps. uint8 maps are written as palette
  PNGs with the VOC palette (0 = background, 255 = ignore); uint16 maps (instance ids) as
  16-bit PNGs.
- `save_float_map` / `load_float_map`: continuous maps (CAMs, probabilities) as float16 `.npy`.
- `overlay` + `write_jpeg`: a mask or heatmap drawn over the image, for people to look at.
All writes are atomic. Unreadable files raise `FssegError` naming the file.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stages.core.artifacts import atomic_path, is_temp_file
from stages.core.errors import FssegError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: class id -> RGB, bits of the id spread over the channels."""
    ids = np.arange(n)
    palette = np.zeros((n, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= (((ids >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return palette


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FssegError(f"image not found: {path}; check the path")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        reason = str(err).split("\n")[0] or err.__class__.__name__
        raise FssegError(
            f"cannot read {path}: not a readable image ({reason}); re-export or remove it"
        ) from None
    return img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 array (H, W, 3), EXIF orientation applied, alpha dropped, 16-bit scaled."""
    return _as_rgb(_open(path))


def _as_rgb(img: Image.Image) -> np.ndarray:
    try:
        img = ImageOps.exif_transpose(img)
    except (OSError, ValueError, SyntaxError):  # a broken EXIF block: keep the stored orientation
        pass
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img).astype(np.float64)
        arr = np.clip(arr / 257.0, 0, 255).round().astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = ((arr - lo) / (hi - lo) * 255 if hi > lo else arr * 0).round().astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    return np.array(img.convert("RGB"))  # a writable copy


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Label map (H, W): uint8 class ids (palette indices for palette PNGs) or uint16 ids."""
    img = _open(path)
    if img.mode in ("P", "L", "1"):
        return np.asarray(img if img.mode != "1" else img.convert("L"), dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img).astype(np.uint16)
    if img.mode == "I":
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise FssegError(f"{path} holds label ids outside 0..65535; save ids as uint8 or uint16 PNG")
        return arr.astype(np.uint16)
    if img.mode in ("RGB", "RGBA"):
        arr = np.asarray(img.convert("RGB"))
        if (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
            return arr[..., 0].copy()
    raise FssegError(
        f"{path} is a {img.mode} image, not a label map of class ids; save labels as single-channel "
        f"(or palette) PNGs whose values are the class ids"
    )


def read_binary_mask(path: str | os.PathLike) -> np.ndarray:
    """A foreground mask (H, W) bool from any image: 0/1 or 0/255, grey or RGB (channels averaged), or a
    palette PNG by its indices (fsseg's own 0/1 masks; a VOC class map: any class, 255 borders excluded
    unless 255 is the only foreground value)."""
    img = _open(path)
    if img.mode == "P":
        ids = np.asarray(img, dtype=np.uint8)
        inner = (ids > 0) & (ids < 255)
        return inner if inner.any() else ids > 0
    values = _as_rgb(img).mean(axis=2)
    return values > (127 if values.max() > 1 else 0)


def support_mask_path(folder: str | os.PathLike, image: Path) -> Path:
    """Ad-hoc mode: a support image's mask, `<folder>/<image stem>.png`; an error when it is missing."""
    path = Path(folder) / f"{image.stem}.png"
    if not path.is_file():
        raise FssegError(f"no support mask {path} for {image.name}; masks share the image's file stem")
    return path


def read_support_mask(path: Path, image: Path, image_hw: tuple[int, int]) -> np.ndarray:
    """Ad-hoc mode: a support's foreground mask (H, W) bool; an error unless it has its image's size."""
    mask = read_binary_mask(path)
    if mask.shape != tuple(image_hw):
        raise FssegError(
            f"support mask {path} is {mask.shape[1]}x{mask.shape[0]} but {image} is "
            f"{image_hw[1]}x{image_hw[0]}; masks must match their images"
        )
    return mask


def write_label(path: str | os.PathLike, label: np.ndarray, palette: np.ndarray | None = None) -> Path:
    """Write a label map losslessly: uint8 as VOC-palette PNG, larger ids as 16-bit PNG."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {label.shape}")
    if label.dtype == np.uint8:
        img = Image.fromarray(label, mode="P")
        img.putpalette((voc_palette() if palette is None else palette).astype(np.uint8).ravel().tolist())
    else:
        if label.min() < 0 or label.max() > 65535:
            raise ValueError("label ids must lie in 0..65535")
        img = Image.fromarray(label.astype(np.uint16))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def save_float_map(path: str | os.PathLike, values: np.ndarray) -> Path:
    """Save a continuous map as float16 `.npy` (atomic)."""
    with atomic_path(path) as tmp:
        np.save(tmp, np.asarray(values, dtype=np.float16))
    return Path(path)


def load_float_map(path: str | os.PathLike) -> np.ndarray:
    """Load a float map written by `save_float_map` as float32."""
    try:
        return np.load(path, allow_pickle=False).astype(np.float32)
    except FileNotFoundError:
        raise FssegError(f"float map not found: {path}; check the path") from None
    except (ValueError, OSError, EOFError) as err:
        raise FssegError(
            f"cannot read {path}: not a valid .npy file ({err}); rerun the stage that wrote it"
        ) from None


def heatmap_colors(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (H, W) to RGB uint8 with the JET colour map."""
    import cv2

    scaled = (np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
    return cv2.applyColorMap(scaled, cv2.COLORMAP_JET)[..., ::-1]


def overlay(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    heatmap: np.ndarray | None = None,
    alpha: float = 0.5,
    color: tuple[int, int, int] = (255, 40, 40),
) -> np.ndarray:
    """Draw a binary mask (in `color`, with its outline) or a [0,1] heatmap over an RGB image."""
    out = image.astype(np.float32)
    if heatmap is not None:
        out = (1 - alpha) * out + alpha * heatmap_colors(heatmap).astype(np.float32)
    if mask is not None:
        import cv2

        fg = np.asarray(mask).astype(bool)
        out[fg] = (1 - alpha) * out[fg] + alpha * np.array(color, np.float32)
        contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        out = np.ascontiguousarray(out.clip(0, 255).astype(np.uint8))
        cv2.drawContours(out, contours, -1, color, thickness=max(1, min(image.shape[:2]) // 200))
    return np.clip(out, 0, 255).astype(np.uint8)


def write_jpeg(path: str | os.PathLike, rgb: np.ndarray, quality: int = 90) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="JPEG", quality=quality)
    return Path(path)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")
    return Path(path)


def list_images(source: str | os.PathLike, extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files named by a folder (not recursive), a single file, or a glob pattern; sorted.
    Temporary files of an interrupted fsseg write (`.NAME.tmp-PID.png`) are never listed."""
    extensions = tuple(e.lower() for e in extensions)
    source_str = str(source)
    path = Path(source_str)
    if path.is_dir():
        files = [
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in extensions and not is_temp_file(p)
        ]
    elif path.is_file():
        files = [path]
    elif any(ch in source_str for ch in "*?["):
        files = [Path(p) for p in glob.glob(source_str) if Path(p).is_file()]
        files = [p for p in files if p.suffix.lower() in extensions and not is_temp_file(p)]
    else:
        raise FssegError(f"{source_str} does not exist; pass an image folder, an image file or a glob")
    if not files:
        raise FssegError(
            f"no images ({', '.join(extensions)}) found in {source_str}; pass a folder, file or glob of images"
        )
    return sorted(files)
