"""One exception family whose messages are written for people.

Every error names what it is about (a file, a config key, a site) and, where there is one,
what to do about it. The CLI prints ``str(error)`` and exits non-zero without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class FedsynthError(Exception):
    """Base class of every error fedsynth raises on purpose."""


class ConfigError(FedsynthError):
    """A configuration key is unknown, missing, mistyped or out of range."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"config key '{key}': {problem}")


class DataError(FedsynthError):
    """A data file is unreadable or its content is invalid."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class CheckpointError(FedsynthError):
    """A checkpoint is missing, corrupted or does not fit the model it is loaded into."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


class TrainingDivergedError(FedsynthError):
    """Training produced non-finite weights; nothing of that step was saved."""


class PrivacyBudgetError(FedsynthError):
    """Taking the requested steps would spend more privacy than the budget allows."""


class ForeignFolderError(FedsynthError):
    """``--overwrite`` was asked to delete a folder fedsynth did not make."""

    def __init__(self, path: str | Path, marker: str):
        self.path = Path(path)
        super().__init__(
            f"{self.path} is not an output folder fedsynth made (no {marker} marker inside); "
            "--overwrite deletes only those: remove it yourself or choose another --out"
        )


class IncompleteRunError(FedsynthError):
    """A training run stopped before its planned rounds; its run directory can be resumed."""

    def __init__(self, run_dir: str | Path, problem: str):
        self.path = Path(run_dir)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OutputExistsError(FedsynthError):
    """An output directory exists and the caller did not ask to overwrite or resume it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        super().__init__(
            f"{self.path} already exists; choose another --out, pass --overwrite, "
            "or --resume it where the command supports that"
        )
