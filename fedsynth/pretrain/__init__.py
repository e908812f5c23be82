"""Public pre-training (``fedsynth pretrain``): the generator's starting point, from public data."""
