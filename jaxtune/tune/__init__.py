"""Hyperparameter search: Optuna studies over training runs, and population-based training
with the whole population in one vmapped program (see docs/guides/search.md)."""
