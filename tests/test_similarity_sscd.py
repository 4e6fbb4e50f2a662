"""SSCD and TorchScript feature extractors on tiny TorchScript modules built here; preprocessing presets."""

import hashlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffmem.similarity.features import FeatureExtractor, TorchScriptExtractor, extract_features
from diffmem.similarity.preprocess import IMAGENET_MEAN, IMAGENET_STD, PREPROCESS, Preprocess, get_preprocess
from diffmem.similarity.sscd import SSCD, load_sscd, max_similarity, sscd_similarity

# torch 2.13 deprecates authoring TorchScript; the tests must still build the files that users download
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")


class TinyDescriptor(nn.Module):
    """conv → global average pool → linear: a stand-in for an SSCD ResNet (unnormalized output on purpose)."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4, dim)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1).flatten(1))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    net = TinyDescriptor().eval()
    path = tmp_path_factory.mktemp("sscd") / "sscd_disc_mixup.torchscript.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    return path, net


def _images(n=4, shape=(3, 40, 60), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g) * 2 - 1


def test_presets_resize_crop_and_normalize():
    x = torch.full((2, 1, 64, 96), 0.2)  # grey, in [-1, 1]
    out = PREPROCESS["dcr"](x)
    assert out.shape == (2, 3, 224, 224)  # short side 256 (→ 256 x 384), centre crop 224
    torch.testing.assert_close(out, torch.full_like(out, 0.2))  # mean = std = 0.5 maps [0, 1] back to [-1, 1]
    out = PREPROCESS["sscd_official"](x)
    assert out.shape == (2, 3, 288, 432)
    expected = (0.6 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 5, 5], expected)
    assert PREPROCESS["square288"](x).shape == (2, 3, 288, 288)


def test_centre_crop_follows_torchvision_rounding():
    x = torch.arange(20.0).view(1, 1, 4, 5) / 20  # in [0, 1) ⊂ [-1, 1]
    crop = Preprocess("crop", crop=2, mean=None, std=None, channels=None)
    # top = round((4 - 2) / 2) = 1, left = round((5 - 2) / 2) = round(1.5) = 2
    torch.testing.assert_close(crop(x), x[..., 1:3, 2:4])


def test_torchscript_extractor_equals_the_module(model_file):
    path, net = model_file
    ext = TorchScriptExtractor(path, preprocess="dcr")
    x = _images()
    with torch.no_grad():
        expected = net(PREPROCESS["dcr"](x))
    torch.testing.assert_close(ext.features(x), expected)
    assert isinstance(ext, FeatureExtractor) and extract_features(ext, x).shape == (4, 8)
    info = ext.describe()
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and info["preprocess"]["name"] == "dcr"


def test_traced_modules_load_too(tmp_path):
    path = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(TinyDescriptor().eval(), torch.zeros(1, 3, 32, 32)), str(path))
    assert TorchScriptExtractor(path, preprocess="imagenet224").features(_images(2)).shape == (2, 8)


def test_sscd_descriptors_are_unit_and_similarity_is_cosine(model_file):
    path, net = model_file
    sscd = load_sscd(path, preset="sscd_official")
    x, y = _images(3, seed=1), _images(5, seed=2)
    a, b = sscd.features(x), sscd.features(y)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3))
    with torch.no_grad():
        raw = net(PREPROCESS["sscd_official"](x))
    torch.testing.assert_close(a, raw / raw.norm(dim=1, keepdim=True))
    sim = sscd_similarity(a, b)
    torch.testing.assert_close(sim, a @ b.T)
    s, idx = max_similarity(a, b)
    torch.testing.assert_close(s, sim.max(1).values)
    assert torch.equal(idx, sim.argmax(1))
    assert sscd.describe()["kind"] == "sscd" and sscd.describe()["centered"] is False


def test_descriptor_centering(model_file):
    path, _ = model_file
    sscd = SSCD(path)
    domain, x = _images(6, seed=3), _images(3, seed=4)
    raw_domain, raw_x = sscd.features(domain), sscd.features(x)
    sscd.fit_center(domain)
    torch.testing.assert_close(sscd.center_, raw_domain.mean(0))
    torch.testing.assert_close(sscd.features(x), F.normalize(raw_x - raw_domain.mean(0), dim=1))
    info = sscd.describe()
    assert info["centered"] is True and len(info["center_sha256"]) == 64


def test_missing_corrupt_and_non_torchscript_files_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        SSCD(tmp_path / "nope.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="not a loadable TorchScript"):
        SSCD(corrupt)
    state = tmp_path / "state_dict.pt"
    torch.save(TinyDescriptor().state_dict(), str(state))
    with pytest.raises(ValueError, match="state_dict"):
        SSCD(state)


@pytest.mark.parametrize("images, match", [
    (torch.zeros(2, 2, 32, 32), "channels"),
    (torch.full((2, 3, 32, 32), 255.0), "expects images in"),
    (torch.zeros(2, 32, 32), "N, C, H, W"),
    (torch.full((2, 3, 32, 32), float("nan")), "NaN"),
])
def test_bad_images(model_file, images, match):
    with pytest.raises(ValueError, match=match):
        SSCD(model_file[0]).features(images)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preprocessing preset"):
        get_preprocess("nope")
