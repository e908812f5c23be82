"""Synthesis: label maps (atlas or cohort, edited) -> generator -> synthetic BraTS cohorts."""
