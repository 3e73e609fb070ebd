"""The tiny random-weight InstructPix2Pix pipeline (`python -m deployments.checkpoints.tiny OUT --variant ip2p`).

A Stable Diffusion UNet whose first convolution takes 8 channels (noisy latents + input-image latents),
a tiny CLIP text encoder, a CLIP tokenizer built in memory (one token per byte, no merges) and a tiny
AutoencoderKL, at the widths of diffusers' own InstructPix2Pix fast tests. The scheduler is the
public checkpoint's (Euler ancestral, scaled-linear betas). No safety checker, as in the engine.
"""

import torch
from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

# timbrooks/instruct-pix2pix's scheduler_config.json
SCHEDULER_CONFIG = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "trained_betas": None,
}
MAX_TOKENS = 77  # CLIP's context, as in the real tokenizer


def build_clip_tokenizer() -> CLIPTokenizer:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # CLIP marks a word's last symbol with </w>: every byte needs both forms.
    symbols = [*alphabet, *(ch + "</w>" for ch in alphabet), "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={s: i for i, s in enumerate(symbols)}, merges=[], model_max_length=MAX_TOKENS)


def build_clip_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5, layer_norm_eps=1e-5,
        max_position_embeddings=MAX_TOKENS, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def build_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=8,  # 4 noisy latents + 4 input-image latents
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    ).eval()


def build_autoencoder() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
    ).eval()


def build_ip2p_pipeline() -> StableDiffusionInstructPix2PixPipeline:
    tokenizer = build_clip_tokenizer()
    return StableDiffusionInstructPix2PixPipeline(
        vae=build_autoencoder(),
        text_encoder=build_clip_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=build_unet(),
        scheduler=EulerAncestralDiscreteScheduler(**SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
