"""Command-line entry points of the engine, in one process: `python -m deployments.cli.edit` (one edit
through the three stages) and `python -m deployments.cli.rerun` (an image made again from its
provenance record).

The top layer of deployments/: may import any of it.
"""
