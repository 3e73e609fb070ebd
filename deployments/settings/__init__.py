"""Every configuration type of the engine, each declared once with its default, meaning and validation:
a checkpoint's engine settings, the limits on a request, the denoising loop's admission, the LoRA
adapters offered, step caching, guards and the fast path. The Serve config (serve/settings.py), the
bulk job's flags and the CLIs are derived from these. Environment variables are read here
(environment.py) and nowhere else.

Torch-free (pydantic, PyYAML): imports only deployments.errors and its own modules.
"""
