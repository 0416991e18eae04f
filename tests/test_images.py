"""Image decoding: every PIL mode, EXIF rotation, huge and tiny images, and bad files reported by name."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from autolabel.images import ImageLoadError, iter_image_paths, load_image
from autolabel.masks import mask_iou
from autolabel.pipeline import Pipeline
from conftest import synthetic_object_image

ORIENTATION_TAG = 0x0112


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def rgb_gradient(h: int = 20, w: int = 30) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 90)], axis=-1).astype(np.uint8)


@pytest.fixture()
def tiny_pipe(tiny_backbone) -> Pipeline:
    return Pipeline("tokencut", backbone=tiny_backbone, max_size=128, refine="none")


# ------------------------------------------------------------------------------------------- colour modes
def test_rgb_png_round_trips_exactly() -> None:
    arr = rgb_gradient()
    out = load_image(encode(Image.fromarray(arr), "PNG"))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    np.testing.assert_array_equal(out, arr)


def test_gray_l_becomes_three_equal_channels() -> None:
    gray = rgb_gradient()[:, :, 0]
    out = load_image(encode(Image.fromarray(gray, "L"), "PNG"))
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_la_composites_transparent_pixels_on_white() -> None:
    gray = np.full((10, 12), 40, np.uint8)
    alpha = np.full((10, 12), 255, np.uint8)
    alpha[:, :6] = 0
    out = load_image(encode(Image.fromarray(np.stack([gray, alpha], -1), "LA"), "PNG"))
    assert (out[:, :6] == 255).all()
    assert (out[:, 6:] == 40).all()


def test_rgba_half_alpha_is_blended_with_white() -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128
    out = load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    expected = np.array([200, 0, 0]) * 128 / 255 + 255 * (1 - 128 / 255)
    assert np.abs(out[0, 0].astype(float) - expected).max() <= 1.5


def test_palette_without_transparency_maps_through_the_palette() -> None:
    pal = Image.new("P", (6, 4))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    pal.putdata([0, 1] * 12)
    out = load_image(encode(pal, "PNG"))
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[0, 1]) == (200, 100, 50)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_index_turns_white(fmt: str) -> None:
    pal = Image.new("P", (6, 4))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    pal.putdata([0, 1] * 12)
    out = load_image(encode(pal, fmt, transparency=0))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (200, 100, 50)


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk_is_converted_to_rgb(fmt: str) -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red ink
    out = load_image(encode(cmyk, fmt))
    assert out.shape == (16, 16, 3)
    assert np.abs(out[8, 8].astype(int) - np.array([255, 0, 0])).max() <= 8


def test_sixteen_bit_png_is_scaled_to_eight_bits() -> None:
    values = (np.arange(200, dtype=np.uint16).reshape(10, 20) * 300)  # up to 59700
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    data = encode(img, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = load_image(data)
    np.testing.assert_allclose(out[:, :, 1].astype(float), values / 257.0, atol=1.0)


def test_int32_image_outside_byte_range_is_normalised() -> None:
    values = np.linspace(-5000, 90000, 300).reshape(15, 20).astype(np.int32)
    data = encode(Image.fromarray(values, "I"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    out = load_image(data)
    assert out.min() == 0 and out.max() == 255
    assert (np.diff(out[:, :, 0].ravel().astype(int)) >= 0).all()  # order kept


def test_float_image_in_unit_range_is_scaled_not_blackened() -> None:
    values = np.linspace(0.0, 1.0, 300, dtype=np.float32).reshape(15, 20)
    data = encode(Image.fromarray(values, "F"), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    out = load_image(data)
    np.testing.assert_allclose(out[:, :, 0].astype(float), values * 255, atol=1.0)


def test_bilevel_image_decodes() -> None:
    bits = np.zeros((9, 9), bool)
    bits[::2] = True
    out = load_image(encode(Image.fromarray(bits), "PNG"))
    assert (out[0] == 255).all() and (out[1] == 0).all()


def test_all_sources_give_the_same_array(tmp_path: Path) -> None:
    arr = rgb_gradient()
    path = tmp_path / "g.png"
    Image.fromarray(arr).save(path)
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), Image.open(path), arr):
        np.testing.assert_array_equal(load_image(source), arr)


def test_gray_array_source_gets_three_channels() -> None:
    out = load_image(np.full((3, 4), 9, np.uint8))
    assert out.shape == (3, 4, 3) and (out == 9).all()


# ------------------------------------------------------------------------------------------ EXIF rotation
def exif_jpeg(arr: np.ndarray, orientation: int) -> bytes:
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[ORIENTATION_TAG] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation, turns", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(orientation: int, turns: int) -> None:
    stored = synthetic_object_image(60, 90, box=(5, 10, 40, 50))
    data = exif_jpeg(stored, orientation)
    plain = load_image(encode(Image.fromarray(stored), "JPEG", quality=95))
    out = load_image(data)
    expected = np.rot90(plain, k=turns)
    assert out.shape == expected.shape
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 2.0


@pytest.mark.parametrize("orientation, turns", [(6, -1), (8, 1)])
def test_boxes_are_in_the_rotated_frame(tiny_pipe: Pipeline, orientation: int, turns: int) -> None:
    h, w, box = 96, 144, (8, 16, 64, 72)  # object on the left of a landscape photo stored sideways
    stored = synthetic_object_image(h, w, box=box)
    truth = np.zeros((h, w), bool)
    truth[box[1]:box[3], box[0]:box[2]] = True
    truth_rot = np.rot90(truth, k=turns)
    det = tiny_pipe(exif_jpeg(stored, orientation), name=f"exif{orientation}.jpg")
    assert det.image_size == (w, h)  # portrait after rotation
    assert len(det) == 1
    x0, y0, x1, y1 = det.xyxy[0]
    assert 0 <= x0 < x1 <= h and 0 <= y0 < y1 <= w  # rotated: width h, height w
    box_mask = np.zeros((w, h), bool)
    box_mask[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
    assert mask_iou(box_mask, truth_rot) > 0.6
    assert mask_iou(det.masks[0], truth_rot) > 0.6


def test_damaged_exif_keeps_the_image_and_its_orientation() -> None:
    stored = synthetic_object_image(60, 90, box=(5, 10, 40, 50))
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[ORIENTATION_TAG] = 6
    exif[0x010F] = "Camera"  # Make, an ASCII tag ...
    data = encode(img, "JPEG", quality=95, exif=exif.tobytes())
    make_entry = b"\x01\x0f\x00\x02"  # big-endian IFD entry: tag 0x010F, type ASCII
    assert data.count(make_entry) == 1
    damaged = data.replace(make_entry, b"\x01\x1e\x00\x02")  # ... now claims to be XPosition (a rational)
    with pytest.raises(Exception):
        ImageOps.exif_transpose(Image.open(io.BytesIO(damaged)))  # what Pillow alone does with it
    out = load_image(damaged, name="damaged-exif.jpg")
    assert out.shape == (90, 60, 3)
    np.testing.assert_array_equal(out, load_image(data))


# ----------------------------------------------------------------------------------------- tiny and huge
def test_one_pixel_image_decodes_and_runs(tiny_pipe: Pipeline) -> None:
    data = encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG")
    arr = load_image(data)
    assert arr.shape == (1, 1, 3) and tuple(arr[0, 0]) == (1, 2, 3)
    det = tiny_pipe(data)
    assert det.image_size == (1, 1)
    assert det.masks is not None and det.masks.shape[1:] == (1, 1)
    assert ((det.xyxy >= 0) & (det.xyxy <= 1)).all()


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12000×9000 JPEG: a flat background with one dark rectangle, written cheaply by PIL."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    img = Image.new("RGB", (12000, 9000), (235, 225, 200))
    ImageDraw.Draw(img).rectangle((3000, 2000, 7000, 6000), fill=(30, 60, 160))
    img.save(path, quality=60)
    return path


def test_huge_image_is_downscaled_with_bounded_time_and_memory(huge_jpeg: Path) -> None:
    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc to read the peak memory of a process")
    script = textwrap.dedent(f"""
        import json, re, time
        t0 = time.perf_counter()
        from autolabel.images import load_image
        arr = load_image({str(huge_jpeg)!r})
        seconds = time.perf_counter() - t0
        status = open("/proc/self/status").read()  # VmHWM: this process's peak RSS (ru_maxrss survives exec)
        peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
        print(json.dumps({{"shape": arr.shape, "seconds": seconds, "peak_mb": peak_kb / 1024}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tuple(stats["shape"]) == (3072, 4096, 3)  # long side capped at MAX_DECODE_SIDE, aspect kept
    assert stats["seconds"] < 20
    full_rgb_mb = 12000 * 9000 * 3 / 2**20  # 309 MiB: a full-size decode alone would exceed the bound
    assert stats["peak_mb"] < full_rgb_mb, stats


def test_huge_image_runs_through_the_pipeline(huge_jpeg: Path, tiny_pipe: Pipeline) -> None:
    t0 = time.perf_counter()
    det = tiny_pipe(huge_jpeg)
    assert time.perf_counter() - t0 < 30
    # decoded downscaled to 4096x3072, but results are in the original file's pixels
    assert det.image_size == (9000, 12000)
    assert len(det) >= 1
    assert det.masks is not None and det.masks.shape[1:] == (9000, 12000)
    assert (det.xyxy[:, [0, 2]] <= 12000).all() and (det.xyxy[:, [1, 3]] <= 9000).all()
    assert (det.xyxy >= 0).all()


def test_decode_image_reports_the_full_upright_size(huge_jpeg: Path) -> None:
    from autolabel.images import decode_image

    arr, full = decode_image(huge_jpeg)
    assert arr.shape == (3072, 4096, 3)
    assert full == (9000, 12000)


def test_decompression_bomb_is_refused_without_decoding() -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 30000, 20000, 8, 2, 0, 0, 0)  # 600 Mpx RGB, no pixel data at all
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    limit_before = Image.MAX_IMAGE_PIXELS
    t0 = time.perf_counter()
    with pytest.raises(ImageLoadError) as err:
        load_image(bomb, name="bomb.png")
    assert time.perf_counter() - t0 < 2
    assert err.value.item == "bomb.png" and "too large" in err.value.reason
    assert Image.MAX_IMAGE_PIXELS == limit_before  # the temporary global limit is restored


# -------------------------------------------------------------------------------------------- bad inputs
def good_jpeg_bytes() -> bytes:
    return encode(Image.fromarray(synthetic_object_image(64, 64, box=(10, 10, 40, 40))), "JPEG")


def good_png_bytes() -> bytes:
    """A noisy PNG: its pixel data does not compress away, so cutting it really truncates it."""
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return encode(Image.fromarray(noise), "PNG")


def corrupt_middle(data: bytes) -> bytes:
    buf = bytearray(data)
    mid = len(buf) // 2
    buf[mid:mid + 64] = b"\x00" * 64
    return bytes(buf)


BAD_FILES = {
    "notes.jpg": (lambda: b"shopping list: eggs, milk\n", "not a recognised image format"),
    "scan.pdf": (lambda: b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n",
                 "not a recognised image format"),
    "empty.png": (lambda: b"", "empty"),
    "truncated.jpg": (lambda: good_jpeg_bytes()[:300], "truncated"),
    "truncated.png": (lambda: good_png_bytes()[:200], "truncated"),
    "corrupt.png": (lambda: corrupt_middle(good_png_bytes()), "corrupt"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_raises_clear_error_naming_it(tmp_path: Path, name: str) -> None:
    make, reason_part = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(ImageLoadError) as err:
        load_image(path)
    assert err.value.item == str(path)
    assert reason_part in err.value.reason
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_bytes_raise_with_the_given_name(name: str) -> None:
    make, _ = BAD_FILES[name]
    with pytest.raises(ImageLoadError) as err:
        load_image(make(), name=f"upload/{name}")
    assert err.value.item == f"upload/{name}"
    assert err.value.reason


def test_missing_file_and_directory_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_array_dtypes_are_converted_not_wrapped() -> None:
    np.testing.assert_array_equal(load_image(np.full((2, 3, 3), 0.5, np.float32)), 128)  # [0, 1] floats
    np.testing.assert_array_equal(load_image(np.full((2, 3, 3), 200, np.int64)), 200)
    np.testing.assert_array_equal(load_image(np.ones((2, 3), bool)), 255)
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 1] = 7
    np.testing.assert_array_equal(load_image(rgba)[..., 1], 7)


def test_bad_arrays_are_reported() -> None:
    with pytest.raises(ImageLoadError, match="not an image") as err:
        load_image(np.zeros((4, 4, 2), np.uint8), name="two-channel")
    assert err.value.item == "two-channel"
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(ImageLoadError, match="outside 0..255"):
        load_image(np.full((4, 4, 3), 1000, np.uint16))  # would silently wrap to 232 otherwise
    with pytest.raises(ImageLoadError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan))


def open_paths() -> set[str]:
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc to list open files")
    out = set()
    for fd in fd_dir.iterdir():
        try:
            out.add(str(fd.readlink()))
        except OSError:
            continue
    return out


def test_files_are_closed_after_success_and_failure(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(good_png_bytes())
    bad = tmp_path / "bad.png"
    bad.write_bytes(good_png_bytes()[:200])
    kept = load_image(good)  # the array outlives the call; the file must not
    with pytest.raises(ImageLoadError) as caught:  # the error is kept around, as a batch report does
        load_image(bad)
    assert kept.shape == (64, 64, 3) and caught.value.item == str(bad)
    still_open = {p for p in open_paths() if p.startswith(str(tmp_path))}
    assert not still_open


def test_iter_image_paths_filters_folders_but_keeps_named_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.jpg", "a.PNG", "sub/c.webp", "readme.txt", "sub/doc.pdf"):
        (tmp_path / name).write_bytes(b"x")
    explicit = tmp_path / "sub" / "doc.pdf"
    found = iter_image_paths([tmp_path, explicit])
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["a.PNG", "b.jpg", "sub/c.webp", "sub/doc.pdf"]
