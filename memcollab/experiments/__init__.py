"""Experiments: configurations over the method (build memory, evaluate, compare), their metrics and runs."""
