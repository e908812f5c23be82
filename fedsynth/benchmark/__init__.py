"""Segmentation benchmark: does synthetic data help a site, can it replace real data.

Arms (``fedsynth.benchmark.arms``) train a 2-D segmenter on real, synthetic or mixed slices,
or with Flower FedAvg (``fedsynth.benchmark.fedavg``); all are scored on the same held-out
patients (``split.test``) with Dice and HD95 per BraTS region
(``fedsynth.benchmark.metrics``). ``fedsynth.benchmark.runner.run_benchmark`` runs
everything and writes ``RUN_DIR/benchmark/``.
"""
