"""The editing engine: model loading, tiny checkpoints, the three stage classes and their contracts.

Imports torch, diffusers, transformers and Pillow; never Ray, serve/ or cluster/.
"""
