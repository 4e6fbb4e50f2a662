"""How a similarity or quality number was made (the provenance every evaluation result carries).

Copy-detection and quality numbers are not comparable across papers unless the similarity model (checkpoint and
file hash), the preprocessing, the aggregation and the threshold are known; every evaluation result carries one
:class:`MetricProvenance`, and optionally the :class:`~diffmem.results.Provenance` of the generation run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from diffmem.results import Provenance, Result, package_version

__all__ = ["MetricProvenance"]


@dataclass(frozen=True)
class MetricProvenance(Result):
    """Attributes:
        metric: similarity or quality metric key (``"sscd_cosine"``, ``"l2"``, ``"ssim"``, ``"fid"``, ...).
        model: the extractor's ``describe()`` (kind, path, sha256, preprocessing), or ``None`` for pixel metrics.
        preprocessing: the preprocessing record (duplicated from ``model`` when it has one, for easy reading).
        aggregation: aggregation key (``"mean_of_max"``, ``"p95"``, ...) or ``None`` for a raw table.
        threshold: the threshold an aggregation or label used, or ``None``.
        params: any other choice that changes the number (k, squared, dedup, grid, window, preset, ...).
        generation: how the images were generated, when known.
    """

    metric: str
    model: dict | None = None
    preprocessing: dict | None = None
    aggregation: str | None = None
    threshold: float | None = None
    params: dict = field(default_factory=dict)
    generation: Provenance | None = None
    package: str = field(default_factory=package_version)

    @classmethod
    def of(cls, metric: str, extractor=None, **kw) -> MetricProvenance:
        """Provenance for ``metric`` computed with ``extractor`` (anything with ``describe()``), or none."""
        model = None if extractor is None else extractor.describe()
        pre = kw.pop("preprocessing", None) or (model or {}).get("preprocess")
        return cls(metric, model=model, preprocessing=pre, **kw)

    def with_aggregation(self, aggregation: str, threshold: float | None = None, **params) -> MetricProvenance:
        return replace(self, aggregation=aggregation, threshold=threshold, params={**self.params, **params})
