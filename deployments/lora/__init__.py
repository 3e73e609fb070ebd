"""LoRA adapters in the Denoiser: the per-row terms that let rows with different adapters share one
forward (per_row.py) and the store that reads, installs and evicts adapters per Denoiser (store.py).

Imports settings/ (what adapters are offered) and PEFT through diffusers.
"""
