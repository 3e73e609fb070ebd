"""A running batch that requests join at different steps, as the Denoiser's engine loop admits them:
the batch-invariance tests and `python -m cluster.bench.gpu --part invariance` compare it with solo runs."""

import torch


def denoise_joining(denoiser, conditionings: list, join_at_step: list[int]) -> tuple[list[torch.Tensor], list[int]]:
    """Denoises `conditionings` in one running batch, request i joining after `join_at_step[i]` steps,
    as the Denoiser's engine loop admits requests. Returns each request's final latents (in request
    order) and the rows of every forward of the denoising model."""
    rows = []

    def count(module, args, kwargs, output):
        rows.append((args[0] if args else kwargs["hidden_states"]).shape[0])

    model = denoiser.family.loaded[denoiser.family.denoising_model]
    hook = model.register_forward_hook(count, with_kwargs=True)
    try:
        jobs, step = {}, 0  # request index -> job, in the order they joined
        while len(jobs) < len(conditionings) or any(not job.done for job in jobs.values()):
            jobs.update({i: denoiser.start(c) for i, c in enumerate(conditionings) if join_at_step[i] == step})
            denoiser.step([job for job in jobs.values() if not job.done])
            step += 1
    finally:
        hook.remove()
    return [denoiser.finish(jobs[i]).latents for i in range(len(conditionings))], rows
