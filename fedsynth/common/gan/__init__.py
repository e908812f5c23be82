"""pix2pix training: losses, the D/G step, the local training loop, evaluation, run directory."""
