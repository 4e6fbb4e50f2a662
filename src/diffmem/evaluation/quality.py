"""Sample quality in one call: FID, precision/recall and density/coverage on one feature extractor's features.

Any :class:`~diffmem.similarity.features.FeatureExtractor` works (a local Inception/CLIP/DINO TorchScript file, or
the digits classifier on the embedded world); its ``describe()`` (file hash, preprocessing) is recorded. The real
and generated features are kept so every number can be recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from diffmem.evaluation.density_coverage import density_coverage
from diffmem.evaluation.fid import fid
from diffmem.evaluation.precision_recall import precision_recall
from diffmem.evaluation.provenance import MetricProvenance
from diffmem.results import Provenance, Result
from diffmem.similarity.features import FeatureExtractor, extract_features

__all__ = ["QualityResult", "quality_from_features", "evaluate_quality"]


@dataclass(frozen=True)
class QualityResult(Result):
    """FID (Heusel et al. 2017), precision/recall (Kynkäänniemi et al. 2019), density/coverage (Naeem et al. 2020)."""

    fid: float
    precision: float
    recall: float
    density: float
    coverage: float
    real_features: Tensor
    fake_features: Tensor
    provenance: MetricProvenance


def quality_from_features(real: Tensor, fake: Tensor, *, k_pr: int = 3, k_dc: int = 5,
                          provenance: MetricProvenance | None = None) -> QualityResult:
    """All five numbers from precomputed features real [N, F] and fake [M, F] (N, M > max(k_pr, k_dc))."""
    p, r = precision_recall(real, fake, k=k_pr)
    d, c = density_coverage(real, fake, k=k_dc)
    prov = provenance or MetricProvenance("quality")
    prov = prov.with_aggregation("quality", None, k_precision_recall=k_pr, k_density_coverage=k_dc,
                                 n_real=len(real), n_fake=len(fake))
    return QualityResult(fid(real, fake), p, r, d, c, real.detach().cpu(), fake.detach().cpu(), prov)


def evaluate_quality(real_images: Tensor, fake_images: Tensor, extractor: FeatureExtractor, *, k_pr: int = 3,
                     k_dc: int = 5, generation: Provenance | None = None) -> QualityResult:
    """Extract features of both image sets with ``extractor`` and compute :func:`quality_from_features`."""
    real, fake = extract_features(extractor, real_images), extract_features(extractor, fake_images)
    prov = MetricProvenance.of("quality", extractor, generation=generation)
    return quality_from_features(real, fake, k_pr=k_pr, k_dc=k_dc, provenance=prov)
