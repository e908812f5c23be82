"""What both sides of the federation share: config, data, models, training, privacy, I/O."""
