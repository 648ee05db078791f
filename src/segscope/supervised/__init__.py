"""Supervised layer: learners fine-tuned on analyst labels on top of the unsupervised layer's outputs."""
