"""Bytes <-> pixels: uploaded images checked by their bytes, decoded and encoded (images.py), OpenAI
masks and outpainting canvases (masks.py), and records written into and read from image files
(metadata.py).

Pillow and NumPy only (no torch): the HTTP edge and the bulk job check images before any stage runs.
Imports deployments.errors and its own modules.
"""
