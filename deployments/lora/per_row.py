"""Per-row LoRA: requests with different adapters — one, several stacked, or none — share one forward.

Adapters are injected into the denoising model by diffusers' own loader (`load_lora_adapter`, which
converts every file format and honours alpha != rank), as PEFT LoRA layers. `install` then replaces
each LoRA layer's forward by one that gives every batch row only the adapters its request asked for,
at its scales, as PEFT's forward does for the adapters `set_adapters` activates:

    y_r = W x_r + sum over the row's adapters a of  B_a(A_a(x_r)) * (scale_{r,a} * alpha_a / rank_a)

The adapter terms are computed row by row: BLAS picks other kernels for one row than for several, so
batched they would change a request's result with its batch-mates (deployments/families/batch_invariance.py
covers the base layers). Which adapters each row uses reaches the layers for one forward through
`rows_using` — diffusers' transformer has no argument for it. Loading never changes the base weights,
and unloading an adapter deletes its layers: the base output stays bit-identical (fuse/unfuse would not).

Under `torch.compile` (the `compile` fast-path setting) two things would otherwise recompile the
blocks for user requests, and past Dynamo's limit of compilations run them uncompiled: the modules
themselves (a loaded adapter turns a block's linears into LoRA layers) and which adapters each row
uses. So `hold_structure` makes every linear of the compiled blocks a LoRA layer at start, and the
adapter terms run eagerly: the compiled code only sees whether some row of the forward uses one.
"""

import contextlib
import functools
import math
from contextvars import ContextVar

import torch

Adapters = tuple[tuple[str, float], ...]  # (name, scale) pairs, in the order they are stacked

# The rank-1 adapter `hold_structure` adds; no request can name it (adapter names start with a letter or digit).
STRUCTURE_ADAPTER = "_compiled_structure"

_ROWS: ContextVar[tuple[Adapters, ...] | None] = ContextVar("lora_rows", default=None)
# Whether _ROWS is set: what compiled code tests (on a tuple it would also guard its length, a graph per row count).
_IN_USE: ContextVar[bool] = ContextVar("lora_in_use", default=False)


@contextlib.contextmanager
def rows_using(adapters_per_row: list[Adapters]):
    """Within it, model forwards give batch row i the adapters `adapters_per_row[i]`."""
    in_use = any(adapters_per_row)
    rows_token, in_use_token = _ROWS.set(tuple(adapters_per_row) if in_use else None), _IN_USE.set(in_use)
    try:
        yield
    finally:
        _ROWS.reset(rows_token)
        _IN_USE.reset(in_use_token)


@contextlib.contextmanager
def only_rows(rows: list[int] | tuple[int, ...]):
    """Within a forward under `rows_using`: a part of its batch, rows `rows` of it in this order."""
    batch = _ROWS.get()
    with rows_using([batch[i] for i in rows] if batch else []):
        yield


def install(model: torch.nn.Module) -> None:
    """Gives every LoRA layer of `model` the per-row forward (idempotent: call after each adapter load)."""
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if not isinstance(module, BaseTunerLayer) or getattr(module, "_per_row_lora", False):
            continue
        if not isinstance(module, LoraLinear):
            raise ValueError(f"LoRA on {name} ({type(module).__name__}) is not supported; only on linear layers")
        module.forward = functools.partial(_per_row_forward, module)
        module._per_row_lora = True


def hold_structure(model: torch.nn.Module) -> None:
    """Makes every linear of the model's repeated blocks (what `compile_repeated_blocks` compiles) a
    LoRA layer now, holding STRUCTURE_ADAPTER (rank 1, B = 0, used only by the Denoiser's warm-up):
    loading and evicting adapters then leaves the compiled blocks' modules as they are."""
    from peft import LoraConfig

    blocks = set(model._repeated_blocks)
    targets = [
        f"{block_name}.{name}"
        for block_name, block in model.named_modules() if type(block).__name__ in blocks
        for name, module in block.named_modules() if isinstance(module, torch.nn.Linear)
    ]
    model.add_adapter(LoraConfig(r=1, lora_alpha=1, target_modules=targets), adapter_name=STRUCTURE_ADAPTER)
    install(model)


def check_plain_lora(model: torch.nn.Module, adapter: str) -> None:
    """Refuses an adapter whose layers are a LoRA variant (DoRA, ...) the per-row forward doesn't compute."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and adapter in getattr(module, "lora_variant", {}):
            raise ValueError(f"adapter {adapter!r} is a LoRA variant on {name} (e.g. DoRA); only plain LoRA is supported")


def _per_row_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    # Adapted from peft 0.21 `tuners/lora/layer.py` Linear.forward (its unmerged, vanilla-LoRA branch).
    result = layer.base_layer(x, *args, **kwargs)
    if not _IN_USE.get():  # no row of this forward uses an adapter
        return result
    return _with_adapter_terms(layer, x, result)


# Eager under torch.compile: which adapters each row uses would otherwise be compiled in, a graph per combination.
@torch.compiler.disable
def _with_adapter_terms(layer, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    rows = _ROWS.get()
    if len(rows) != x.shape[0]:
        raise ValueError(f"{len(rows)} rows' adapters given for a batch of {x.shape[0]}")
    own = [[(name, scale) for name, scale in row if name in layer.lora_A] for row in rows]
    if not any(own):  # no row uses an adapter that touches this layer
        return result
    out = []
    for i, adapters in enumerate(own):
        row = result[i : i + 1]
        for name, scale in adapters:
            lora_A, lora_B, dropout = layer.lora_A[name], layer.lora_B[name], layer.lora_dropout[name]
            x_row = layer._cast_input_dtype(x[i : i + 1], lora_A.weight.dtype)
            row = row + lora_B(lora_A(dropout(x_row))) * _scaling(layer, name, scale)
        out.append(row)
    return torch.cat(out).to(result.dtype)


def _scaling(layer, adapter: str, scale: float) -> float:
    """PEFT's `set_scale`: the request's scale times alpha / rank (alpha / sqrt(rank) for rsLoRA)."""
    if layer.use_rslora.get(adapter, False):
        return scale * layer.lora_alpha[adapter] / math.sqrt(layer.r[adapter])
    return scale * layer.lora_alpha[adapter] / layer.r[adapter]
