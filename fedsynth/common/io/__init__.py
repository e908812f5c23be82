"""Input and output that must never leave a half-written file behind."""
