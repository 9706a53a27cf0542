"""Data layer: annotations and keywords, download layouts, splits, image decoding and preprocessing,
augmentation, the balanced sampler, the dual-eye dataset, the synthetic generator, prepare, TFDS."""
