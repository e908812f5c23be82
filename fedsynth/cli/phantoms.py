"""``fedsynth phantoms --out DIR``: generate the built-in phantom cohort."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from fedsynth.cli._common import Summary
from fedsynth.common.config import PhantomConfig

DESCRIPTION = """\
Generate a phantom brain-tumour cohort in BraTS 2021 layout (no download needed).

Anatomy: the MNI152 2009 template and its tissue maps shipped with nilearn, under a random
affine and smooth deformation per subject. Tumours: grown procedurally in deep white
matter with an irregular shape, necrotic core, enhancing rim (bright on T1c only),
oedema (bright on T2 and FLAIR) and mass effect; a share of subjects is healthy.
Contrasts: T1, T1c, T2, FLAIR with tissue-specific intensities, bias field, texture and
Rician noise. Scanner sites differ in contrast, intensity scale, noise, blur (slice
thickness), site size and tumour mix, so sites are not IID.

Writes DIR/<id>/<id>_{t1,t1ce,t2,flair,seg,tissue}.nii.gz (labels 0/1/2/4, enhancing as
4 as in BraTS 2021; tissue 0 bg, 1 CSF, 2 GM, 3 WM), DIR/manifest.csv
(subject,scanner_site,split; split left empty), DIR/phantom.json (settings, site
profiles, tumour parameters) and DIR/preview.png. The same settings give identical
files. DIR is built under a temporary name and appears only when complete."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "phantoms",
        help="generate the built-in phantom cohort (BraTS layout, several scanner sites)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="cohort folder to create")
    parser.add_argument("--subjects", type=int, default=40, help="number of subjects (default 40)")
    parser.add_argument("--sites", type=int, default=4, help="scanner sites (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--voxel-size",
        type=float,
        default=2.0,
        metavar="MM",
        help="isotropic voxel size in mm (default 2)",
    )
    parser.add_argument(
        "--healthy-fraction",
        type=float,
        default=0.1,
        help="share of subjects without tumour, in [0, 1] (default 0.1)",
    )
    parser.add_argument(
        "--preview-subjects", type=int, default=4, help="rows in preview.png (default 4; 0: none)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace DIR if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> Summary:

    from fedsynth.common.data.phantom import MANIFEST, generate_phantom_cohort
    from fedsynth.common.data.preview import preview_cohort
    from fedsynth.common.data.splits import natural_key

    cfg = PhantomConfig(
        subjects=args.subjects,
        sites=args.sites,
        voxel_size=args.voxel_size,
        healthy_fraction=args.healthy_fraction,
        seed=args.seed,
    )
    out = Path(args.out)
    start = time.perf_counter()
    generate_phantom_cohort(out, cfg, overwrite=args.overwrite)
    elapsed = time.perf_counter() - start
    lines = (out / MANIFEST).read_text(encoding="utf-8").splitlines()[1:]
    per_site = Counter(line.split(",")[1] for line in lines)
    sites = ", ".join(f"{s}: {per_site[s]} subjects" for s in sorted(per_site, key=natural_key))
    outputs = {"cohort": out, "manifest": out / MANIFEST}
    if args.preview_subjects > 0:
        outputs["preview"] = preview_cohort(
            out, out / "preview.png", n_subjects=args.preview_subjects
        )
    return Summary(
        "phantoms",
        f"wrote {cfg.subjects} phantom subjects in {elapsed:.1f} s ({sites})",
        outputs,
        {"subjects": cfg.subjects, "subjects_per_site": dict(per_site)},
    )
