"""Continuous batching in the Denoiser: the loop that admits requests between steps and runs them
(denoise_loop.py), its admission policy, pure and unit-tested without a model (admission.py), and a
helper that has requests join a running batch (staggered.py).

Imports stages/ and below.
"""
