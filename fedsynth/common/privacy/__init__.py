"""Differential privacy with the patient as the protected unit: DP-SGD, accounting, reports."""
