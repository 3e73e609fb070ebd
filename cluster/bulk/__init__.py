"""Offline bulk re-editing with Ray Data over Parquet manifests: `python -m cluster.bulk --help`.

__main__.py: the command and the pipeline. manifest.py: what a manifest must hold. image_reads.py:
where a row's images are read from, capped. requests.py: rows -> EditRequests. stages.py: the Ray
Data steps around the engine's stage classes. storage.py: OUT (local or object storage), atomic
writes. results.py: the results dataset, one schema, bounded parts, one row per id across resumed
runs. tally.py: counts and the summary.
"""
