"""Offline bulk re-editing with Ray Data over Parquet manifests (the pipeline lands in its own step).

manifest.py: what a manifest must hold, checked before any work starts.
outputs.py: where results go: safe file names for any id, atomic writes, nothing outside OUT.
"""
