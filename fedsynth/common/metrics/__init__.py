"""Metrics: image quality of synthetic images against paired ground truth."""
