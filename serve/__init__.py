"""The online app: Ray Serve deployments wrapping the engine's stage classes, the OpenAI-compatible HTTP
ingress, its settings and config files, and the editing page. Imports deployments/; `python -m serve`
runs it.
"""
