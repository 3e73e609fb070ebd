"""Keeping a request's result independent of what else shares its batch."""

import torch


def make_per_row_linears_batch_invariant(model: torch.nn.Module) -> None:
    """Computes the model's per-row linears (timestep embedding, modulation: inputs (B, D)) as a batch
    of one-row products. BLAS picks other kernels for a (1, D) x (D, O) product than for a (B, D) one,
    so as one matmul a request's result would change in the last bits with whatever else shares its
    batch; a batched matmul of B (1, D) x (D, O) products computes each row as the one-row product
    does, in one call (no loop over rows, so `torch.compile` with dynamic shapes compiles it once for
    every batch size). The token-wise linears (B, L, D) are large matmuls whose rows don't depend on
    the batch, and stay as they are."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.forward = _as_one_row_products(module)


def _as_one_row_products(linear: torch.nn.Linear):
    plain = linear.forward

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            return plain(x)
        rows = x.shape[0]
        weight = linear.weight.t().expand(rows, -1, -1)  # (rows, D, O), a view: no copy
        if linear.bias is None:
            return torch.bmm(x[:, None], weight)[:, 0]
        return torch.baddbmm(linear.bias.expand(rows, 1, -1), x[:, None], weight)[:, 0]

    return run
