"""Drift monitoring of new batches against a model's reference data (no Prefect).

``batch`` reads a batch (ImageFolder through a class map, an unlabelled folder, a CSV, an S3
prefix); ``model`` loads the monitored model's real module; ``describe`` computes per-image
descriptors, penultimate-layer embeddings and predictions; ``drift`` runs the Evidently report
and decides covariate drift; ``label_shift`` estimates class priors by black-box shift
estimation (BBSE); ``alerts`` writes the alert and sends notifications.
"""
