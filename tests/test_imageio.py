"""Image and label I/O on every format users hand us."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from stages.core.errors import FssegError
from stages.core.imageio import (
    list_images,
    load_float_map,
    overlay,
    read_image,
    read_label,
    save_float_map,
    voc_palette,
    write_jpeg,
    write_label,
)


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    img[:, :16] = (200, 30, 30)  # flat areas survive lossy codecs
    return img


@pytest.mark.parametrize(
    "ext,lossless", [(".png", True), (".bmp", True), (".tif", True), (".webp", False), (".jpg", False)]
)
def test_rgb_formats(tmp_path, rgb, ext, lossless):
    path = tmp_path / f"img{ext}"
    Image.fromarray(rgb).save(path, **({"lossless": True} if ext == ".webp" else {}))
    out = read_image(path)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    if lossless or ext == ".webp":
        np.testing.assert_array_equal(out, rgb)
    else:
        assert np.abs(out[:, :14].astype(int) - rgb[:, :14]).max() < 12


def test_grayscale_rgba_palette(tmp_path, rgb):
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, 2))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    pal = Image.fromarray(np.arange(24 * 32, dtype=np.uint32).reshape(24, 32).astype(np.uint8) % 4, "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    pal.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert tuple(out[0, 1]) == (255, 0, 0) and tuple(out[0, 3]) == (0, 0, 255)


def test_16bit_gray_and_rgb(tmp_path):
    ramp = (np.arange(32, dtype=np.uint16) * 2000).reshape(1, 32).repeat(4, 0)
    cv2.imwrite(str(tmp_path / "g16.png"), ramp)
    out = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out[..., 0], np.round(ramp / 257).astype(np.uint8))
    rgb16 = np.dstack([ramp, ramp // 2, np.full_like(ramp, 65535)])
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])  # cv2 writes BGR
    out = read_image(tmp_path / "c16.png")
    assert out.shape == (4, 32, 3)
    assert abs(int(out[0, 31, 0]) - round(62000 / 257)) <= 1 and out[0, 0, 2] == 255


def test_exif_orientation_is_applied(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :5] = 255  # white strip on the left
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    pil.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "o.jpg")
    assert out.shape[:2] == (40, 20)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # the left strip is now on top


def test_corrupt_and_missing_files_name_the_file(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("cut.png", "text.jpg"):
        with pytest.raises(FssegError, match=name + ".*not a readable image"):
            read_image(tmp_path / name)
    with pytest.raises(FssegError, match="image not found"):
        read_image(tmp_path / "missing.png")


def test_label_round_trips(tmp_path):
    label = np.random.default_rng(1).integers(0, 21, (10, 12)).astype(np.uint8)
    label[0, 0] = 255
    write_label(tmp_path / "l.png", label)
    assert Image.open(tmp_path / "l.png").mode == "P"
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), label)
    rgb = np.asarray(Image.open(tmp_path / "l.png").convert("RGB"))
    np.testing.assert_array_equal(rgb[0, 1], voc_palette()[label[0, 1]])
    inst = np.random.default_rng(2).integers(0, 40000, (10, 12)).astype(np.uint16)
    write_label(tmp_path / "i.png", inst)
    back = read_label(tmp_path / "i.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, inst)


def test_voc_palette_known_colours():
    pal = voc_palette()
    assert (
        tuple(pal[1]) == (128, 0, 0)
        and tuple(pal[15]) == (192, 128, 128)
        and tuple(pal[255]) == (224, 224, 192)
    )


def test_colour_label_is_rejected(tmp_path, rgb):
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(FssegError, match="not a label map"):
        read_label(tmp_path / "colour.png")


def test_float_map_and_overlay(tmp_path, rgb):
    cam = np.linspace(0, 1, 24 * 32, dtype=np.float32).reshape(24, 32)
    save_float_map(tmp_path / "c.npy", cam)
    assert np.load(tmp_path / "c.npy").dtype == np.float16
    np.testing.assert_allclose(load_float_map(tmp_path / "c.npy"), cam, atol=1e-3)
    pic = overlay(rgb, heatmap=cam, mask=cam > 0.5)
    assert pic.shape == rgb.shape and pic.dtype == np.uint8
    write_jpeg(tmp_path / "o.jpg", pic)
    assert read_image(tmp_path / "o.jpg").shape == rgb.shape


def test_list_images_folder_file_glob(tmp_path, rgb):
    for name in ("b.jpg", "a b%&.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a b%&.png", "b.jpg"]
    assert [p.name for p in list_images(tmp_path / "b.jpg")] == ["b.jpg"]
    assert [p.name for p in list_images(str(tmp_path / "*.jpg"))] == ["b.jpg"]
    with pytest.raises(FssegError, match="does not exist"):
        list_images(tmp_path / "nope")


def test_binary_masks_from_palette_pngs_are_read_by_index(tmp_path):
    """fsseg's own 0/1 masks (palette PNGs, index 1 drawn dark red) and VOC class maps (255 = border)."""
    from stages.core.imageio import read_binary_mask, write_label

    mask = np.zeros((5, 6), np.uint8)
    mask[1:3, 2:4] = 1
    write_label(tmp_path / "own.png", mask)
    assert (read_binary_mask(tmp_path / "own.png") == mask.astype(bool)).all()
    voc = mask * 15
    voc[0, :] = 255  # a border is not foreground beside a class
    write_label(tmp_path / "voc.png", voc)
    assert (read_binary_mask(tmp_path / "voc.png") == mask.astype(bool)).all()
    write_label(tmp_path / "white.png", mask * 255)  # 0/255: 255 is the foreground
    assert (read_binary_mask(tmp_path / "white.png") == mask.astype(bool)).all()
