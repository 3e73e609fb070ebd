"""The three stage classes the cluster runs — Encoder, Denoiser, Decoder — each written once and
wrapped twice (a Ray Serve deployment in serve/, a Ray Data actor in cluster/bulk/), and the three of
them in one process (in_process.py) for the CLIs, benchmarks and tests.

Imports families/ and everything below it; never batching/ (the loop drives a Denoiser, not the
other way round), Ray, serve/ or cluster/.
"""
