"""Model layer: the model spec (backbone registry, heads as data), the backbone families, checkpoints,
initial weights and the training-data provenance a model file records; no framework code."""
