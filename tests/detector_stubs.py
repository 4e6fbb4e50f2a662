"""Hand-made subjects for exact detector checks: a denoiser with a known prediction and an NFE counter."""

import torch

from diffmem.denoiser import Denoiser
from diffmem.schedules import DiscreteSchedule
from diffmem.subject import closed_form_subject


class ShiftDenoiser(Denoiser):
    """ε_θ(x_t, t, c) = x_t + pattern[c] (the null label −1 picks the last pattern); counts evaluated rows (NFE)."""

    prediction_type = "epsilon"

    def __init__(self, patterns, schedule=None):
        self.patterns, self.schedule, self.rows = patterns, schedule or DiscreteSchedule.named("scaled_linear"), 0
        self.name = "shift"

    def model_output(self, x_t, t, c):
        self.rows += len(x_t)
        return x_t + self.patterns[c].to(x_t.dtype)


def shift_subject(patterns, steps=10):
    """A subject around :class:`ShiftDenoiser` with one prompt per pattern (the last pattern is the null branch)."""
    den = ShiftDenoiser(patterns)
    return closed_form_subject(den, patterns[:-1].clone(), steps=steps, name="shift"), den


def given_images(subject, imgs):
    """The subject with a decoder that returns ``imgs`` (rows in the detector's prompt-major order)."""
    from dataclasses import replace

    return replace(subject, decode=lambda states: imgs[:len(states)].to(torch.float64))
