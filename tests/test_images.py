"""The one image reader: every PIL mode and bit depth to [0, 1] with its dynamic range, per-image (no folder
statistic), explicit resizing, refusal of too-small images, streamed folders within the open-file limit."""

import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffmem.adapters.subject import load_image, read_manifest
from diffmem.images import read_image
from diffmem.worlds.custom import load_collection


def _gradient16(h=64, w=1024):
    return (np.arange(h * w, dtype=np.int64).reshape(h, w) % 65536).astype(np.uint16)


def test_16bit_gradient_round_trips_within_one_step(tmp_path):
    g = _gradient16()
    Image.fromarray(g).save(tmp_path / "g.png")
    a = read_image(tmp_path / "g.png")
    assert a.shape == (1, 64, 1024)
    assert np.abs(a[0] - g / 65535.0).max() <= 1 / 65535  # not a black/white 8-bit clip
    assert a.min() == 0.0 and a.max() == 1.0


def test_16bit_folder_and_manifest_keep_the_range(tmp_path):
    g = (np.linspace(0, 65535, 16 * 16).reshape(16, 16)).astype(np.uint16)
    folder = tmp_path / "f"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(g).save(folder / f"{i}.png")
    images, *_ = load_collection(folder)
    expect = torch.from_numpy((g / 65535.0 * 2 - 1).astype(np.float32))
    assert images.shape == (3, 1, 16, 16)
    torch.testing.assert_close(images[0, 0], expect, rtol=0, atol=2 / 65535)
    # a Kim manifest image: RGB from grey, same values on each channel (was an all-white image)
    (tmp_path / "m.jsonl").write_text('{"prompt": "p", "image": "f/0.png"}\n')
    x = load_image(read_manifest(tmp_path / "m.jsonl")[0]["image"], (16, 16))
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x, expect.expand(3, 16, 16), rtol=0, atol=2 / 65535)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I"])
def test_every_mode_maps_into_unit_range_with_known_values(tmp_path, mode):
    rgb = np.zeros((4, 6, 3), dtype=np.uint8)
    rgb[:, :3] = (255, 255, 255)  # left half white, right half black
    im = Image.fromarray(rgb)
    if mode == "I;16":
        im = Image.fromarray(np.where(rgb[..., 0] > 0, 65535, 0).astype(np.uint16))
    elif mode == "I":
        im = Image.fromarray(np.where(rgb[..., 0] > 0, 65535, 0).astype(np.int32))
    else:
        im = im.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I") else "x.png")
    im.save(path)
    a = read_image(path)
    assert a.dtype == np.float64 and a.shape[0] in (1, 3) and a.shape[1:] == (4, 6)
    np.testing.assert_allclose(a[:, :, :3], 1.0)
    np.testing.assert_allclose(a[:, :, 3:], 0.0)


def test_one_by_one_rgb_keeps_all_channels(tmp_path):
    Image.fromarray(np.array([[[200, 10, 90]]], dtype=np.uint8)).save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png")[:, 0, 0], np.array([200, 10, 90]) / 255)


def _folder(root: Path, n=4, size=8, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return root


def test_one_odd_image_leaves_the_others_bit_identical(tmp_path):
    clean = load_collection(_folder(tmp_path / "a"), image_size=8)[0]
    odd = _folder(tmp_path / "b")
    Image.fromarray(np.full((40, 40, 3), 7, dtype=np.uint8)).save(odd / "zz_big.png")
    images = load_collection(odd, image_size=8)[0]
    assert torch.equal(images[:4], clean)  # previously every image was squashed to the smallest one
    # a 1x1 image is too small for the 8x8 world: refused, naming the file, never flattening the rest
    Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)).save(odd / "zz_tiny.png")
    with pytest.raises(ValueError, match=r"zz_tiny\.png.*1x1, smaller than the required 8x8"):
        load_collection(odd, image_size=8)
    # at a size every file reaches, the 1x1 image is accepted and the others are unchanged by it
    assert torch.equal(load_collection(odd, image_size=1)[0][:4], load_collection(tmp_path / "a", image_size=1)[0])


def test_resize_policies(tmp_path):
    a = np.zeros((8, 16), dtype=np.uint8)
    a[:, 4:12] = 255  # the centre square is white
    Image.fromarray(a).save(tmp_path / "w.png")
    np.testing.assert_allclose(read_image(tmp_path / "w.png", size=8, fit="crop"), 1.0)
    stretched = read_image(tmp_path / "w.png", size=(8, 8), fit="stretch")
    assert stretched.min() < 0.5 < stretched.max()  # the black sides are kept
    with pytest.raises(ValueError, match="not 8x8"):
        read_image(tmp_path / "w.png", size=8, fit="none")
    with pytest.raises(ValueError, match="resize policy"):
        read_image(tmp_path / "w.png", size=8, fit="squash")


def test_non_image_and_truncated_image_are_named(tmp_path):
    folder = _folder(tmp_path / "f")
    (folder / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"bad\.png.* not a readable image"):
        load_collection(folder)
    (folder / "bad.png").unlink()
    raw = (folder / "img0.png").read_bytes()
    (folder / "img0.png").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"img0\.png.*not a readable image"):
        load_collection(folder)


FD_SCRIPT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[2])))
from diffmem.worlds.custom import load_collection
x = load_collection(sys.argv[1], image_size=4)[0]
print(tuple(x.shape))
"""


def test_folder_larger_than_the_open_file_limit(tmp_path):
    """1,500 files under a limit of 256 open files (the 100,000-file case was measured once, see the report)."""
    root = tmp_path / "many"
    root.mkdir()
    buf = tmp_path / "one.png"
    Image.fromarray(np.full((4, 4), 128, dtype=np.uint8)).save(buf)
    data = buf.read_bytes()
    for i in range(1500):
        (root / f"{i:05d}.png").write_bytes(data)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = min(256, soft)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(FD_SCRIPT), str(root), str(limit)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(1500, 1, 4, 4)"
