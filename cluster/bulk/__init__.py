"""Offline bulk re-editing with Ray Data over Parquet manifests: `python -m cluster.bulk --help`.

__main__.py: the command and the pipeline. stages.py: the Ray Data steps around the engine's stage
classes. manifest.py: what a manifest must hold. outputs.py: safe file names, atomic writes.
results.py: the results dataset, kept to one row per id across resumed runs.
"""
