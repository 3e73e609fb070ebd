"""Running a model fast on its device: the fast-path settings applied to a transformer or a VAE
(fast_path.py), FP8 linears (fp8.py) and tensors moved between a GPU and the host (transfer.py).

Imports settings/ and torch; no model family.
"""
