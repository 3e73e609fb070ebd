"""Checkpoints: resolving and loading one (loader.py: a directory or a hub id, its family and engine
settings), and the ones the project writes itself, offline: tiny checkpoints and adapters for tests
and `make serve` (tiny.py, tiny_ip2p.py, tiny_adapters.py), full-size random presets (random_presets.py),
written once under a file lock (generated.py).

Imports settings/ and request/; diffusers and transformers only where it builds a checkpoint.
"""
