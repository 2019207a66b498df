"""Data quality: per-image features, Great Expectations validation, curation."""
