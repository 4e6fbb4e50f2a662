"""The analytic oracle of every detector: the exact memorizer vs the population it was drawn from.

Population: K classes, class k ~ N(μ_k, s² I) on 1×8×8 states. Training set: half the classes ("planted") have ONE
training image, the other half 32. Under the *empirical* denoiser (the exact minimiser of the training loss, Ye et
al., 2025) a one-image class is a point mass — every seed reproduces that image — while a 32-image class spreads over
its images; under the *population* denoiser both halves are the same Gaussian, so nothing separates them. A detector
should give AUC ≈ 1 on the first and ≈ 0.5 on the second.
"""

import torch

from diffmem.schedules import DiscreteSchedule
from diffmem.subject import Prompt, Subject, closed_form_subject
from diffmem.theory.closed_form import NULL_LABEL, GaussianMixtureDenoiser
from diffmem.types import Cond

SHAPE = (1, 8, 8)


def oracle_subjects(k: int = 80, per_class: int = 32, s: float = 0.5, steps: int = 20, seed: int = 0):
    """(empirical subject, population subject, labels [K] with 1 = planted), prompts in the same order."""
    # the data's stream must not be the noise stream of a generation seed (SeededNoise seeds 0, 1, … draw x_T)
    g = torch.Generator().manual_seed(10_000 + seed)
    d = 64
    mu = torch.randn(k, d, generator=g, dtype=torch.float64) * 0.6
    planted = torch.arange(k) % 2 == 0
    counts = torch.where(planted, 1, per_class)
    labels = torch.repeat_interleave(torch.arange(k), counts)
    train = (mu[labels] + s * torch.randn(len(labels), d, generator=g, dtype=torch.float64)).clamp(-1, 1)
    sched = DiscreteSchedule.named("scaled_linear")
    emp = GaussianMixtureDenoiser(train.view(-1, *SHAPE), sched, labels=labels, name="empirical")
    pop = GaussianMixtureDenoiser(mu.view(-1, *SHAPE), sched, var=s**2, name="population")
    subjects = []
    for den, name in ((emp, "empirical"), (pop, "population")):
        base = closed_form_subject(den, train.view(-1, *SHAPE), steps=steps, name=name)
        prompts = tuple(Prompt(f"class:{i}", f"class {i}", Cond(torch.tensor([i]), torch.tensor([NULL_LABEL])),
                               "planted" if planted[i] else "nonplanted",
                               train[labels == i][0].view(SHAPE), {"m": int(counts[i])}) for i in range(k))
        subjects.append(Subject(name, den, None, SHAPE, base.sampler, prompts, steps=steps,
                                references=train.view(-1, *SHAPE)))
    return subjects[0], subjects[1], planted.long().numpy()
