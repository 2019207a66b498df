"""Training: models and weights, transforms, LR schedules, the LR range test, the training loop."""
