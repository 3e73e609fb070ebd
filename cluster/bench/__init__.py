"""Benchmarks, each a script that measures against its baseline in the same run: `python -m
cluster.bench.load` (the served app under load), .bulk (bulk vs online), .cache (step caching),
.lora (mixed adapters), .gpu (diffusers vs the engine, on a GPU), .node_loss (a node killed under
load), .quality (a quality report's cost). common.py holds what they share.
"""
