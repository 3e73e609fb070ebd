"""The Qwen-Image-Edit family (Qwen-Image-Edit, -2509, -2511): its request fields (parameters.py), its
math adapted from diffusers' QwenImageEdit pipelines (family.py), masked edits and outpainting as
diffusers' inpaint pipeline makes them (masked_edits.py), padded prompts attended without a mask
(prompt_padding.py), and per-row step caches (step_cache.py).
"""
