"""The consortium's server: the Flower ServerApp, generator-only aggregation, checkpoints."""
