"""Evaluation on arrays: metrics, the promotion gate's statistics, plots."""
