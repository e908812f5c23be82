"""Comparing privacy budgets: one federated run per epsilon, side by side (privacy-sweep)."""
