"""Empirical privacy audit of a trained generator (``fedsynth audit RUN_DIR``).

inputs.py       what the audit reads from a run directory: config, generator, members, held-out
membership.py   membership inference by reconstruction error; ROC AUC, TPR at low FPR
memorisation.py nearest-neighbour distances of synthetic slices to training and held-out slices
figures.py      roc.png, memorisation.png, closest_pairs.png
writer.py       audit.json and audit.md (with the threat model), the whole audit end to end
"""
