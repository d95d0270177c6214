"""Decode heads. Each takes the backbone's feature list and returns ``{"out": logits}``."""
