"""Services started for real: the local stack script, team configs, and UI screenshot helpers."""
