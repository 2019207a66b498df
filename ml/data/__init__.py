"""Data: image decoding, manifests, duplicate-aware splits, the decoded image cache, the synthetic generator, class maps."""
