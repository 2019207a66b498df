"""Robustness: image corruptions (impulse noise, blur) and the train/test corruption ablation."""
