"""Writes tiny random-weight checkpoints in diffusers format, with no download at all.

    python -m deployments.checkpoints.tiny OUT_DIR --variant edit|edit-plus|ip2p

The Qwen-Image-Edit checkpoints (edit, edit-plus) have the real models' architecture at toy widths
(the configs of diffusers' own Qwen-Image-Edit fast tests), a byte-level BPE tokenizer built in memory
with the Qwen special tokens, a `Qwen2VLProcessor` and the real scheduler config; the InstructPix2Pix
one is built in deployments/checkpoints/tiny_ip2p.py. The Qwen ones carry tiny LoRA adapters in `adapters/`
(deployments/checkpoints/tiny_adapters.py). They load through the same loader as real
checkpoints. Their weights are random, so the images they produce are noise: they exist to test the
plumbing and the math (parity with diffusers), not edit quality.
"""

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from tokenizers import pre_tokenizers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from deployments.checkpoints.tiny_adapters import write_adapters
from deployments.checkpoints.tiny_ip2p import build_ip2p_pipeline
from deployments.settings.engine import ENGINE_SETTINGS_FILE, EngineSettings

logger = logging.getLogger(__name__)

PIPELINES = {"edit": QwenImageEditPipeline, "edit-plus": QwenImageEditPlusPipeline}
VARIANTS = (*PIPELINES, "ip2p")

# Bump when the builder's output changes, so generated default checkpoints are rebuilt on next use
# (deployments/checkpoints/generated.py).
TINY_BUILD = 4
BUILD_MARKER = "tiny_build.txt"

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Small areas keep a tiny edit around a second on a CPU; real checkpoints use diffusers' defaults.
TINY_ENGINE_SETTINGS = {
    "vae_image_area": 256 * 256,
    "condition_image_area": 128 * 128,
    "default_num_inference_steps": 8,
}

# InstructPix2Pix edits at the input's size up to this area: small inputs keep CPU tests fast.
VARIANT_ENGINE_SETTINGS = {"ip2p": {"vae_image_area": 128 * 128}}

# Qwen's real scheduler config (dynamic shifting on), so the sigma schedule is the one users get.
SCHEDULER_CONFIG = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}


def build_tokenizer() -> Qwen2Tokenizer:
    # One token per byte and no merges: every string tokenizes, ids are stable, nothing is downloaded.
    # transformers 5 needs the vocab in memory (a vocab file path silently gives a one-token vocab).
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    return tokenizer


def build_processor(tokenizer: Qwen2Tokenizer) -> Qwen2VLProcessor:
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
    )


def qwen25_vl_config(tokenizer: Qwen2Tokenizer, text: dict, vision: dict, **top_level) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL configuration whose special-token ids are `tokenizer`'s (also used by the
    full-size random presets)."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config={**text, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
                     "pad_token_id": ids["<|endoftext|>"]},
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **top_level,
    )


def build_text_encoder(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    text = {
        "hidden_size": 16,
        "intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0,
        "vocab_size": len(tokenizer),
    }
    vision = {"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16}
    config = qwen25_vl_config(tokenizer, text, vision, hidden_size=16, vocab_size=len(tokenizer))
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_transformer() -> QwenImageTransformer2DModel:
    torch.manual_seed(0)
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    ).eval()


def build_vae() -> AutoencoderKLQwenImage:
    torch.manual_seed(0)
    z_dim = 4
    return AutoencoderKLQwenImage(
        base_dim=8,  # narrower than diffusers' test VAE (24): the VAE dominates a tiny edit on CPU
        z_dim=z_dim,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    ).eval()


def build_pipeline(variant: str):
    """The complete tiny pipeline for `variant` ("edit", "edit-plus" or "ip2p"), in memory."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    if variant == "ip2p":
        return build_ip2p_pipeline()
    tokenizer = build_tokenizer()
    return PIPELINES[variant](
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        vae=build_vae(),
        text_encoder=build_text_encoder(tokenizer),
        tokenizer=tokenizer,
        processor=build_processor(tokenizer),
        transformer=build_transformer(),
    )


def write_checkpoint(out_dir: str | Path, variant: str = "edit-plus", **engine_settings: int) -> Path:
    """Writes the tiny checkpoint to `out_dir` (diffusers format + the engine settings file);
    `engine_settings` override TINY_ENGINE_SETTINGS (e.g. a benchmark's working area)."""
    out_dir = Path(out_dir)
    pipeline = build_pipeline(variant)
    pipeline.save_pretrained(out_dir)
    if variant in PIPELINES:  # tiny LoRA adapters in each file format, for the Qwen-Image-Edit transformer
        write_adapters(out_dir, pipeline.transformer, type(pipeline))
    settings = EngineSettings(**{**TINY_ENGINE_SETTINGS, **VARIANT_ENGINE_SETTINGS.get(variant, {}), **engine_settings})
    (out_dir / ENGINE_SETTINGS_FILE).write_text(json.dumps(dataclasses.asdict(settings), indent=2) + "\n")
    logger.info("wrote tiny %s checkpoint to %s", variant, out_dir)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="directory to write the checkpoint into")
    parser.add_argument("--variant", choices=VARIANTS, default="edit-plus")
    parser.add_argument("--vae-image-area", type=int, help="default: the variant's tiny setting")
    parser.add_argument("--condition-image-area", type=int, help="default: the variant's tiny setting")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    areas = {"vae_image_area": args.vae_image_area, "condition_image_area": args.condition_image_area}
    write_checkpoint(args.out_dir, args.variant, **{name: area for name, area in areas.items() if area is not None})


if __name__ == "__main__":
    main()
