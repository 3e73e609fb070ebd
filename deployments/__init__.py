"""The editing engine: settings, request declarations, checkpoints, model families, the three stage
classes and their contracts, and the continuous-batching loop — one package per role, layered (the
README's "Layout" lists them lowest first; tests/unit/test_layout.py checks it).

Imports torch, diffusers, transformers and Pillow; never Ray, serve/ or cluster/.
"""
