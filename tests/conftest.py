"""Shared fixtures: small closed-form worlds used as oracles across the suite."""

import pytest
import torch

from diffmem import DiscreteSchedule, discrete_grid
from helpers import TinyNet

# The suite's models are tiny: threads only add OpenMP spin-waits, which on 2 shared cores were seen to slow small
# ops 100x. One thread makes the suite's speed independent of whatever else the machine runs.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    # Commands run in-process set torch's threads from the machine's free cores; a later test that compares bits
    # with a one-thread subprocess must not inherit that count (a reduction split over 2 threads rounds differently).
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def sd_schedule():
    return DiscreteSchedule.named("scaled_linear")


@pytest.fixture(scope="session")
def sd_grid(sd_schedule):
    """Stable Diffusion's DDIM grid: leading spacing, steps_offset 1, set_alpha_to_one False."""
    return discrete_grid(sd_schedule, 50, steps_offset=1, next_rule="ratio", final="first")


@pytest.fixture
def tiny_net():
    return TinyNet()
