"""Experiment configs: one module per dataset x architecture, helpers in `experiments.common`.

Run from the repository root, e.g. `python -m launch.main --config=experiments/tiny.py ...`.
"""
