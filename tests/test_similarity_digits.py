"""The embedded digits classifier: trained into a temporary DIFFMEM_HOME, cached, deterministic, accurate."""

import json

import pytest
import torch
from safetensors.torch import load_file

from diffmem.similarity import digits_classifier as dc
from diffmem.similarity.digits_classifier import DigitsClassifierConfig, digits_images, load_digits_classifier
from diffmem.similarity.features import FeatureExtractor

TINY = DigitsClassifierConfig(width=4, hidden=8, epochs=2)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("diffmem_home")
        mp.setenv("DIFFMEM_HOME", str(path))
        yield path


@pytest.fixture(scope="module")
def classifier(home):
    return load_digits_classifier()  # the default config, trained once (seconds)


def test_default_classifier_is_accurate_and_cached_in_the_given_home(classifier, home):
    assert classifier.test_accuracy >= 0.97
    assert classifier.path.parent == home / "digits_classifier"
    meta = json.loads(classifier.path.with_suffix(".json").read_text())
    assert meta["test_accuracy"] == classifier.test_accuracy and meta["n_test"] == 359
    assert meta["sha256"] == classifier.describe()["sha256"]
    # the recorded held-out accuracy is the accuracy on the seeded held-out split
    images, labels = digits_images()
    _, test = dc._split(len(images), classifier.config)
    acc = (classifier.predict(images[test]) == labels[test]).double().mean().item()
    assert acc == pytest.approx(classifier.test_accuracy, abs=1e-6)


def test_cache_is_reused_without_retraining(classifier, monkeypatch):
    monkeypatch.setattr(dc, "train_digits_classifier", lambda config: pytest.fail("retrained a cached model"))
    again = load_digits_classifier()
    images, _ = digits_images()
    assert torch.equal(again.predict(images), classifier.predict(images))
    assert again.test_accuracy == classifier.test_accuracy


def test_training_is_deterministic_for_a_config(home):
    first = load_digits_classifier(config=TINY, retrain=True)
    w1 = load_file(str(first.path))
    second = load_digits_classifier(config=TINY, retrain=True)
    w2 = load_file(str(second.path))
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert first.path != load_digits_classifier(config=DigitsClassifierConfig(seed=1, width=4, hidden=8,
                                                                              epochs=1)).path  # keyed by config


def test_training_leaves_the_global_rng_alone(home):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_digits_classifier(config=TINY, retrain=True)
    assert torch.equal(torch.rand(3), expected)


def test_features_and_predictions(classifier):
    images, labels = digits_images()
    assert images.shape == (1797, 1, 8, 8) and images.min() == -1 and images.max() == 1
    feats = classifier.features(images[:50])
    assert feats.shape == (50, 128) and bool((feats >= 0).all())  # post-ReLU penultimate layer
    assert classifier.predict(images).dtype == torch.long
    assert isinstance(classifier, FeatureExtractor)
    info = classifier.describe()
    assert info["kind"] == "digits_classifier" and info["test_accuracy"] == classifier.test_accuracy


@pytest.mark.parametrize("images, match", [
    (torch.zeros(4, 8, 8), r"\[N, 1, 8, 8\]"),
    (torch.zeros(4, 3, 8, 8), r"\[N, 1, 8, 8\]"),
    (torch.zeros(4, 1, 16, 16), r"\[N, 1, 8, 8\]"),
    (torch.full((4, 1, 8, 8), 16.0), "scaled to"),
    (torch.full((4, 1, 8, 8), float("nan")), "NaN"),
    (torch.zeros(0, 1, 8, 8), "empty"),
])
def test_bad_images(classifier, images, match):
    with pytest.raises(ValueError, match=match):
        classifier.features(images)


def test_digits_features_separate_real_from_corrupted_digits(classifier):
    """FID / precision on the classifier's features: two halves of the real digits are close; the same digits
    with heavy noise are far (FID several times larger, precision lower)."""
    from diffmem.evaluation.fid import fid
    from diffmem.evaluation.precision_recall import precision_recall

    images, _ = digits_images()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(images), generator=g)
    a, b = images[perm[:800]], images[perm[800:1600]]
    noisy = (b + 0.8 * torch.randn(b.shape, generator=g)).clamp(-1, 1)
    fa, fb, fn = classifier.features(a), classifier.features(b), classifier.features(noisy)
    assert fid(fa, fa) == pytest.approx(0.0, abs=1e-6)
    assert fid(fa, fn) > 3 * fid(fa, fb)
    assert precision_recall(fa, fn)[0] < precision_recall(fa, fb)[0]
