"""Model families: what a family's three stages compute. base.py is the shared interface (ModelFamily,
its Conditioning), loading.py picks a family's class for a checkpoint, batch_invariance.py holds the
per-row helpers every family uses. One folder per family holds all of it: its request declaration
(parameters.py, torch-free), its math (family.py) and what only it needs (attention, caching, masks,
noise).

Imports everything below it (settings/ .. devices/); never stages/ or batching/.
"""
