"""Spiking architectures as `transformers` models, one folder each."""
