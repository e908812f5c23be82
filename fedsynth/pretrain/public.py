"""The public cohort: which data ``fedsynth pretrain`` may use, and proof it is not private.

A public cohort is either a phantom cohort of its own (``pretrain.phantom``: other subjects
under another id prefix, other scanner profiles from another seed) or a BraTS-layout folder
the consortium declares public (``pretrain.source: cohort``, e.g. the public BraTS training
set). Before any training, ``check_disjoint`` refuses a public cohort that shares a subject
with the sites or the test patients, by subject id or by image content (a hash of each
image's voxels, so a renamed or re-saved copy of a private scan is caught too).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from fedsynth.common.config import Config, SplitConfig
from fedsynth.common.data.brats import discover_cases
from fedsynth.common.data.phantom import MANIFEST
from fedsynth.common.errors import DataError

PUBLIC_SITE = "site-0"  # the public cohort's training patients form one split group


def public_config(cfg: Config) -> Config:
    """The config that trains on the public cohort: its data and split, no DP, every
    generator parameter trained (``privacy.trainable`` is what the SITES fine-tune later; a
    pre-training restricted to it would leave a random network), pretrain.* optimisation
    settings, the same model (so its weights fit the federated run's)."""
    p = cfg.pretrain
    data = dataclasses.replace(cfg.data, source=p.source, cohort_dir=p.cohort_dir)
    split = SplitConfig(policy="iid", sites=1, test_fraction=p.test_fraction, seed=cfg.split.seed)
    train = dataclasses.replace(
        cfg.train, steps=p.steps, batch_size=p.batch_size, lr=p.lr, eval_every=p.eval_every,
        checkpoint_every=p.eval_every, sample_every=p.eval_every, site="all",
    )  # fmt: skip
    return dataclasses.replace(
        cfg, name=f"{cfg.name}-pretrain", data=data, phantom=p.phantom, split=split, train=train,
        privacy=dataclasses.replace(cfg.privacy, enabled=False, trainable="all"),
        model=dataclasses.replace(cfg.model, init=None),
    )  # fmt: skip


@dataclass(frozen=True)
class CohortFingerprint:
    """Subjects of a cohort folder and a hash of every image's voxels."""

    folder: Path
    subjects: dict[str, list[str]]  # subject id -> voxel sha256 of each image it has

    def image_hashes(self) -> dict[str, str]:
        return {h: s for s, hashes in self.subjects.items() for h in hashes}


def voxel_sha256(path: Path) -> str:
    """sha256 of an image's voxel array (dtype, shape and bytes), independent of the file's
    compression and header; DataError naming the file if it cannot be read."""
    try:
        arr = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as e:  # nibabel raises several types for damaged files
        raise DataError(path, f"cannot read the image to fingerprint it: {e}") from e
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def fingerprint(folder: str | Path, subjects: list[str] | None = None) -> CohortFingerprint:
    """Fingerprint the cohort in ``folder`` (all its subjects, or only ``subjects``)."""
    cases = discover_cases(folder)
    wanted = None if subjects is None else set(subjects)
    out = {
        c.case_id: [voxel_sha256(p) for _, p in sorted(c.images.items())]
        for c in cases
        if wanted is None or c.case_id in wanted
    }
    return CohortFingerprint(Path(folder), out)


def check_disjoint(public: CohortFingerprint, private: CohortFingerprint) -> None:
    """DataError naming the public folder if it shares a subject id or an image with
    ``private`` (the sites' and test patients' cohort)."""
    same_id = sorted(set(public.subjects) & set(private.subjects))
    if same_id:
        raise DataError(
            public.folder,
            f"declared public, but shares {len(same_id)} subject id(s) with the private cohort "
            f"{private.folder}: {', '.join(same_id[:5])}{' ...' if len(same_id) > 5 else ''}. "
            "Pre-training on them would leak the sites' patients without DP.",
        )
    priv = private.image_hashes()
    pairs = sorted({(s, priv[h]) for h, s in public.image_hashes().items() if h in priv})
    if pairs:
        shown = ", ".join(f"{a} = {b}" for a, b in pairs[:5])
        raise DataError(
            public.folder,
            f"declared public, but {len(pairs)} subject(s) have images identical to private "
            f"ones in {private.folder} (public = private: {shown}). Remove those subjects.",
        )


def manifest_sha256(folder: str | Path) -> str:
    """sha256 of the cohort's manifest.csv (its subjects and split): names the data used."""
    path = Path(folder) / MANIFEST
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise DataError(path, f"cannot read the manifest: {e}") from e
