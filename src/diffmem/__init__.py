"""diffmem: measure, explain, detect and mitigate memorization in diffusion models.

The two contracts (README.md, "What it is"): a :class:`Denoiser` returns ε_c and ε_u apart, and :func:`sample` is
the one loop, returning a recorded :class:`Trajectory`. Every name below is imported on first use (PEP 562), so
``import diffmem`` loads nothing heavy — not even torch — until a name is touched; the analyses, detectors,
mitigations and metrics are reachable from here as well as from their modules.
"""

from __future__ import annotations

import importlib

from diffmem.version import __version__

# module -> public names it defines
_MODULES = {
    "diffmem.denoiser": "Denoiser", "diffmem.results": "Result Provenance",
    "diffmem.sampling.guidance": "Constant DynamicTransition Guidance StaticTransition Window cfg opposite_guidance",
    "diffmem.sampling.hooks": "Hook Intervention", "diffmem.sampling.loop": "sample",
    "diffmem.sampling.solvers": "ddim_step ddpm_step euler_step", "diffmem.sampling.trajectory": "Recorder Trajectory",
    "diffmem.schedules": "DiscreteSchedule Grid VPSDESchedule continuous_grid discrete_grid",
    "diffmem.seeding": "SeededNoise", "diffmem.types": "Cond Prediction StepRecord",
    # subjects, library bridges, loggers, saved results
    "diffmem.subject": "Subject Prompt", "diffmem.worlds.subject": "world_subject",
    "diffmem.worlds.world": "load_world", "diffmem.adapters.subject": "diffusers_subject",
    "diffmem.sampling.diffusers_recorder": "DiffusersRecorder", "diffmem.sampling.loggers": "TensorBoardHook WandbHook",
    "diffmem.runners.load": "load_result",
    # analyses (Kim et al. 2025)
    "diffmem.analyses.kim": "run_kim KimConfig KimResult", "diffmem.analyses.decomposition": "decompose_trajectory",
    "diffmem.analyses.convergence": "convergence", "diffmem.analyses.noise_content": "noise_content",
    "diffmem.analyses.overestimation": "guided_loss",
    # detectors and mitigations
    "diffmem.detectors": "make_detector", "diffmem.detectors.harness": "run_detection",
    "diffmem.detectors.audit": "audit", "diffmem.mitigations.base": "MITIGATIONS make_mitigation",
    # metrics
    "diffmem.similarity.ssim": "ssim ms_ssim",
    "diffmem.similarity.criteria": "nn_ratio memorization_ratio relative_distance",
    "diffmem.evaluation.fid": "fid", "diffmem.evaluation.precision_recall": "precision_recall",
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names.split()}
_ALIASES = {"DETECTORS": ("diffmem.detectors.base", "REGISTRY")}

__all__ = ["__version__", *_EXPORTS, *_ALIASES]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _ALIASES:
        module, attr = _ALIASES[name]
        value = getattr(importlib.import_module(module), attr)
    else:
        raise AttributeError(f"module 'diffmem' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
