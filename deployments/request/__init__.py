"""What an edit request may set: the fields every family shares and the JSON-text field types
(fields.py), the registry of the families' declarations (registry.py; each family declares its own
fields in families/<family>/parameters.py), binding them to limits and a checkpoint and validating
values with one message per refusal (binding.py), and command-line flags derived from them (flags.py).

Torch-free (pydantic): imports settings/, media/ and the families' parameter declarations only, so the
HTTP edge and the bulk job can validate a request before any stage sees it.
"""
