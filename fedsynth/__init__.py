"""fedsynth: federated, differentially private synthesis of brain-tumour MRI."""

__version__ = "0.1.0"
