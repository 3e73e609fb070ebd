"""Keeping a request's result independent of what else shares its batch."""

import torch


def make_per_row_linears_batch_invariant(model: torch.nn.Module) -> None:
    """Runs the model's per-row linears (timestep embedding, modulation: inputs (B, D)) one row
    at a time. BLAS picks other kernels for 1 row than for several, so without this a request's
    result would change in the last bits with whatever else shares its batch. The token-wise linears
    (B, L, D) are large matmuls whose rows don't depend on the batch, and stay batched."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = _row_by_row(module.forward)


def _row_by_row(forward):
    def run(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.shape[0] > 1:
            return torch.cat([forward(x[i : i + 1]) for i in range(x.shape[0])])
        return forward(x)

    return run
