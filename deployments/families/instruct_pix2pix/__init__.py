"""The InstructPix2Pix family: its request fields (parameters.py), its math adapted from diffusers'
StableDiffusionInstructPix2PixPipeline (family.py), and per-request ancestral noise (ancestral_noise.py).
"""
