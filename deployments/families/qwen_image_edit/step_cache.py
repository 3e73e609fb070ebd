"""Step caching decided per request row inside one batched forward: First-Block-Cache and TaylorSeer.

diffusers' cache hooks (hooks/first_block_cache.py, hooks/taylorseer_cache.py) decide once per
forward for the whole batch and keep one batch-shaped cache: in a batch whose requests join and leave
between steps they crash when the batch size changes, and a batch-mate changes a request's result.
Here every request row (its guidance row too) keeps its own state in its job, and decides from its
own history alone:

- First-Block-Cache: the first block runs for every row; a row whose first-block residual moved by
  less than its threshold (relative mean absolute difference) since its last computed step adds the
  residual the other blocks added then, and the other blocks run only for the rows that compute.
  The decisions of all rows cross to the host together, once per forward.
- TaylorSeer (diffusers' "lite" mode): on the steps its schedule computes, a row runs the model and
  updates the Taylor factors of its output; on the others it skips the forward entirely and its
  output is the Taylor expansion. The decision depends only on the row's own step count (no sync).

Each state reproduces diffusers' hook arithmetic for one request, so a request alone matches
diffusers' pipeline with the same cache config, decision for decision.
"""

import math
from dataclasses import dataclass, field

import torch
from diffusers.models.transformers.transformer_qwenimage import compute_text_seq_len_from_mask

from deployments.families.qwen_image_edit import prompt_padding
from deployments.lora import per_row
from deployments.settings.step_cache import FirstBlockCache, TaylorSeer


@dataclass(eq=False)
class FirstBlockCacheRow:
    """One row's First-Block-Cache (diffusers' FBCSharedBlockState and its head block's decision)."""

    threshold: float
    head_residual: torch.Tensor | None = None  # (1, L, D) the first block's residual at the last computed step
    tail_residual: torch.Tensor | None = None  # (1, L, D) what the other blocks added to the image stream then
    computed: int = 0  # forwards through every block
    reused: int = 0  # forwards through the first block only

    def change(self, residual: torch.Tensor) -> torch.Tensor | None:
        """How far `residual` (1, L, D) moved from the last computed one, relative (a 0-d tensor), or None
        when nothing is cached yet."""
        if self.head_residual is None:
            return None
        previous = self.head_residual
        return (residual - previous).abs().mean() / previous.abs().mean()


@dataclass(eq=False)
class TaylorSeerRow:
    """One row's TaylorSeer (diffusers' TaylorSeerState and TaylorSeerCacheHook, one output)."""

    cache_interval: int
    disable_cache_before_step: int
    disable_cache_after_step: int | None
    max_order: int
    step: int = -1
    last_update_step: int | None = None
    factors: dict[int, torch.Tensor] = field(default_factory=dict)
    computed: int = 0
    predicted: int = 0

    def should_compute(self) -> bool:
        """Advances the row's step count and says whether this step runs the model."""
        self.step += 1
        warm_up = self.step < self.disable_cache_before_step
        interval = (self.step - self.disable_cache_before_step - 1) % self.cache_interval == 0
        cool_down = self.disable_cache_after_step is not None and self.step >= self.disable_cache_after_step
        compute = warm_up or interval or cool_down
        self.computed += compute
        self.predicted += not compute
        return compute

    def update(self, output: torch.Tensor) -> None:
        """New Taylor factors from a computed output (1, L, C): recursive divided differences up to
        max_order. Kept as a copy: a view would keep the whole batch's output alive."""
        factors = {0: output.clone()}
        if self.last_update_step is not None:
            delta = self.step - self.last_update_step
            for order in range(self.max_order):
                previous = self.factors.get(order)
                if previous is None:
                    break
                factors[order + 1] = (factors[order] - previous) / delta
        self.factors = factors
        self.last_update_step = self.step

    def predict(self) -> torch.Tensor:
        offset = self.step - self.last_update_step
        output = torch.zeros_like(self.factors[0])
        for order in range(len(self.factors)):
            output = output + self.factors[order] * ((offset**order) / math.factorial(order))
        return output


RowCache = FirstBlockCacheRow | TaylorSeerRow


def summed_report(caches: list[RowCache]) -> dict[str, int]:
    """A request's model forwards over its rows: computed in full, reused (First-Block-Cache: the first
    block only) and predicted (TaylorSeer: none)."""
    return {
        "computed": sum(cache.computed for cache in caches),
        "reused": sum(getattr(cache, "reused", 0) for cache in caches),
        "predicted": sum(getattr(cache, "predicted", 0) for cache in caches),
    }


def new_row_cache(config: FirstBlockCache | TaylorSeer | None) -> RowCache | None:
    """A fresh state for one row from a request's `cache` setting (None: no caching)."""
    if config is None:
        return None
    return {"first_block_cache": FirstBlockCacheRow, "taylorseer": TaylorSeerRow}[config.method](**config.model_dump(exclude={"method"}))


@torch.no_grad()
def forward_with_first_block_cache(
    transformer, caches: list[FirstBlockCacheRow | None], adapters: list[per_row.Adapters], hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor, encoder_hidden_states_mask: torch.Tensor | None, timestep: torch.Tensor,
    img_shapes: list, attention_kwargs: dict,
) -> torch.Tensor:
    """QwenImageTransformer2DModel's forward (its output sample, (B, L, C)) where row i with a cache in
    `caches` runs blocks 2..N only when its first block's residual moved more than its threshold.
    Adapted from diffusers 0.42 `transformer_qwenimage.py` (forward) and `hooks/first_block_cache.py`."""
    t = transformer
    with per_row.rows_using(adapters):
        hidden_states = t.img_in(hidden_states)
        timestep = timestep.to(hidden_states.dtype)
        modulate_index = None
        if t.zero_cond_t:  # -2511: the condition image's tokens are modulated with t = 0
            timestep = torch.cat([timestep, timestep * 0], dim=0)
            modulate_index = torch.tensor(
                [[0] * math.prod(sample[0]) + [1] * sum(math.prod(s) for s in sample[1:]) for sample in img_shapes],
                device=timestep.device, dtype=torch.int,
            )
        encoder_hidden_states = t.txt_in(t.txt_norm(encoder_hidden_states))
        text_seq_len, _, encoder_hidden_states_mask = compute_text_seq_len_from_mask(encoder_hidden_states, encoder_hidden_states_mask)
        temb = t.time_text_embed(timestep, hidden_states, None)
        rotary = t.pos_embed(img_shapes, max_txt_seq_len=text_seq_len, device=hidden_states.device)
        head, *others = t.transformer_blocks
        block_inputs = dict(
            encoder_hidden_states_mask=encoder_hidden_states_mask, temb=temb, image_rotary_emb=rotary,
            joint_attention_kwargs=attention_kwargs, modulate_index=modulate_index,
        )
        head_text, head_image = head(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, **block_inputs)
    compute = _decide(caches, head_image - hidden_states)
    rows = [i for i, computes in enumerate(compute) if computes]
    image = head_image.clone()
    if rows:
        text, computed = head_text[rows], head_image[rows]
        inputs = _rows_of(block_inputs, rows, hidden_states.shape[0])
        with per_row.rows_using([adapters[i] for i in rows]), prompt_padding.only_rows(rows):
            for block in others:
                text, computed = block(hidden_states=computed, encoder_hidden_states=text, **inputs)
        image[rows] = computed
        for j, i in enumerate(rows):
            if caches[i] is not None:
                caches[i].tail_residual = computed[j : j + 1] - head_image[i : i + 1]
    for i, cache in enumerate(caches):  # (diffusers also adds the text stream's residual, which nothing reads after the blocks)
        if cache is not None and not compute[i]:
            image[i : i + 1] = cache.tail_residual + head_image[i : i + 1]
    with per_row.rows_using(adapters):
        if t.zero_cond_t:
            temb = temb.chunk(2, dim=0)[0]
        return t.proj_out(t.norm_out(image, temb))


def _decide(caches: list[FirstBlockCacheRow | None], residuals: torch.Tensor) -> list[bool]:
    """Which rows run the other blocks: rows without a cache always; a cached row when nothing is cached
    yet or its residual moved more than its threshold. One host transfer for all rows' changes."""
    changes = {i: cache.change(residuals[i : i + 1]) for i, cache in enumerate(caches) if cache is not None}
    measured = [i for i, change in changes.items() if change is not None]
    values = dict(zip(measured, torch.stack([changes[i] for i in measured]).tolist())) if measured else {}
    compute = []
    for i, cache in enumerate(caches):
        computes = cache is None or i not in values or values[i] > cache.threshold
        if cache is not None:
            if computes:  # a copy: a view would keep the whole batch's residual alive, for as long as the row reuses it
                cache.head_residual = residuals[i : i + 1].clone()
            cache.computed += computes
            cache.reused += not computes
        compute.append(computes)
    return compute


def _rows_of(block_inputs: dict, rows: list[int], batch: int) -> dict:
    """The blocks' per-row inputs for `rows` only (temb holds 2 x batch rows with zero_cond_t)."""
    temb, mask, modulate_index = block_inputs["temb"], block_inputs["encoder_hidden_states_mask"], block_inputs["modulate_index"]
    index = torch.tensor(rows, device=temb.device)
    if temb.shape[0] == 2 * batch:
        index_temb = torch.cat([index, index + batch])
    else:
        index_temb = index
    return {
        **block_inputs,
        "temb": temb[index_temb],
        "encoder_hidden_states_mask": None if mask is None else mask[index],
        "modulate_index": None if modulate_index is None else modulate_index[index],
    }
