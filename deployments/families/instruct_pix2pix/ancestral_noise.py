"""Ancestral schedulers' per-step noise, drawn when a request starts instead of in every step.

diffusers' Euler-ancestral scheduler draws one noise tensor of the latents' shape in each step from
the request's generator (plain Euler draws none without `s_churn`, which the pipelines don't set). It is a CPU generator (the reference pipelines are seeded that
way, and its numbers are what a seed means), so each step would draw on the host and copy to the
device: a host-device sync per step on a GPU. Drawn from the same generator right after the initial
noise, in the same order, the values are the same: `draw` takes them all at once, the job copies
them to the device once, and `given` hands the step's own to the scheduler.
"""

import contextlib
import sys
from contextvars import ContextVar

import torch
from diffusers.utils.torch_utils import randn_tensor

_GIVEN: ContextVar[list[torch.Tensor] | None] = ContextVar("step_noise", default=None)
DRAWING_EVERY_STEP = ("EulerAncestralDiscreteScheduler",)


def draws_every_step(scheduler) -> bool:
    return type(scheduler).__name__ in DRAWING_EVERY_STEP


def draw(generator: torch.Generator, steps: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """(steps, *shape) the noise the scheduler would draw in each step, as `randn_tensor` draws it."""
    return torch.stack([torch.randn(shape, generator=generator, dtype=dtype) for _ in range(steps)])


def install(scheduler_class: type) -> None:
    """Makes the scheduler's steps take the noise `given` them (and draw as before outside `given`)."""
    module = sys.modules[scheduler_class.__module__]
    if getattr(module, "randn_tensor", None) is randn_tensor:
        module.randn_tensor = _given_or_drawn


@contextlib.contextmanager
def given(noise: torch.Tensor):
    """Within it, the scheduler's step takes `noise` instead of drawing (once: a second draw is an error)."""
    token = _GIVEN.set([noise])
    try:
        yield
    finally:
        _GIVEN.reset(token)


def _given_or_drawn(shape, generator=None, device=None, dtype=None, layout=None):
    given_noise = _GIVEN.get()
    if given_noise is None:
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype, layout=layout)
    if not given_noise:
        raise RuntimeError("the scheduler drew noise twice in one step; only one draw per step is supported")
    noise = given_noise.pop()
    if tuple(noise.shape) != tuple(shape):
        raise RuntimeError(f"the scheduler drew noise of shape {tuple(shape)}, the step's is {tuple(noise.shape)}")
    return noise.to(dtype)
