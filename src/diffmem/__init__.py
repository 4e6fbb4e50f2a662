"""diffmem: measure, explain, detect and mitigate memorization in diffusion models.

The two contracts (README.md, "What it is"): a :class:`Denoiser` returns ε_c and ε_u apart, and :func:`sample` is
the one loop, returning a recorded :class:`Trajectory`. Every name below is imported on first use (PEP 562), so
``import diffmem`` loads nothing heavy — not even torch — until a name is touched; the analyses, detectors,
mitigations and metrics are reachable from here as well as from their modules.
"""

from __future__ import annotations

import importlib

from diffmem.version import __version__

# public name -> module that defines it
_EXPORTS = {
    "Denoiser": "diffmem.denoiser", "Result": "diffmem.results", "Provenance": "diffmem.results",
    "Constant": "diffmem.sampling.guidance", "DynamicTransition": "diffmem.sampling.guidance",
    "Guidance": "diffmem.sampling.guidance", "StaticTransition": "diffmem.sampling.guidance",
    "Window": "diffmem.sampling.guidance", "cfg": "diffmem.sampling.guidance",
    "opposite_guidance": "diffmem.sampling.guidance", "Hook": "diffmem.sampling.hooks",
    "Intervention": "diffmem.sampling.hooks", "sample": "diffmem.sampling.loop", "ddim_step": "diffmem.sampling.solvers",
    "ddpm_step": "diffmem.sampling.solvers", "euler_step": "diffmem.sampling.solvers",
    "Recorder": "diffmem.sampling.trajectory", "Trajectory": "diffmem.sampling.trajectory",
    "DiscreteSchedule": "diffmem.schedules", "Grid": "diffmem.schedules", "VPSDESchedule": "diffmem.schedules",
    "continuous_grid": "diffmem.schedules", "discrete_grid": "diffmem.schedules", "SeededNoise": "diffmem.seeding",
    "Cond": "diffmem.types", "Prediction": "diffmem.types", "StepRecord": "diffmem.types",
    # subjects, library bridges and loggers
    "Subject": "diffmem.subject", "Prompt": "diffmem.subject", "world_subject": "diffmem.worlds.subject",
    "load_world": "diffmem.worlds.world", "diffusers_subject": "diffmem.adapters.subject",
    "DiffusersRecorder": "diffmem.sampling.diffusers_recorder", "TensorBoardHook": "diffmem.sampling.loggers",
    "WandbHook": "diffmem.sampling.loggers", "load_result": "diffmem.runners.load",
    # analyses (Kim et al. 2025)
    "run_kim": "diffmem.analyses.kim", "KimConfig": "diffmem.analyses.kim", "KimResult": "diffmem.analyses.kim",
    "decompose_trajectory": "diffmem.analyses.decomposition", "convergence": "diffmem.analyses.convergence",
    "noise_content": "diffmem.analyses.noise_content", "guided_loss": "diffmem.analyses.overestimation",
    # detectors and mitigations
    "make_detector": "diffmem.detectors", "run_detection": "diffmem.detectors.harness",
    "audit": "diffmem.detectors.audit", "MITIGATIONS": "diffmem.mitigations.base",
    "make_mitigation": "diffmem.mitigations.base",
    # metrics
    "ssim": "diffmem.similarity.ssim", "ms_ssim": "diffmem.similarity.ssim", "nn_ratio": "diffmem.similarity.criteria",
    "memorization_ratio": "diffmem.similarity.criteria", "relative_distance": "diffmem.similarity.criteria",
    "fid": "diffmem.evaluation.fid", "precision_recall": "diffmem.evaluation.precision_recall",
}
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
