"""Batch prediction: a table of one row per input file (probabilities, top labels, or the reason
a file was left out)."""
