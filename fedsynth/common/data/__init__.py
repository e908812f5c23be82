"""The data layer: BraTS discovery and labels, validation, preprocessing, caches, phantoms, splits."""
