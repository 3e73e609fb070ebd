"""What is done with an edit beyond making it: its quality report (quality.py), guards that judge the
report (guards.py), chained edits (chains.py), the result cache's key and store (result_cache.py),
and the provenance record every output carries (provenance.py).

Imports settings/, media/ and request/ (and torch where a report measures tensors); never the model
stages.
"""
