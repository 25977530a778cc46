"""Representation report of a pretrained encoder.

``python -m vicreg_lightning.report <checkpoint, run dir or export dir> [--data NAME] [--out DIR]``

Writes a folder with PNG figures, ``report.md``, ``report.html`` (the same, images inlined) and
``report.json`` (every number). By default the evaluation uses the data set and augmentation recipe
of the training run (``<run dir>/.hydra/config.yaml``); validation images go through the run's
``eval_transform``, training images (for the linear probe and the kNN bank) too.

1. **Spectrum and health.** Singular values of the backbone features and of the expander
   embeddings on the validation set, RankMe (Garrido, Balestriero, Najman, LeCun, ICML 2023), the
   per-dimension std (what VICReg's variance term pushes to 1; Bardes, Ponce, LeCun, ICLR 2022) and
   a block of the embeddings' correlation matrix (what its covariance term pushes to 0). The
   numbers are :mod:`vicreg_lightning.metrics.health`'s.
2. **Linear probe.** A logistic regression (scikit-learn) fitted on frozen backbone features of
   the training split, evaluated on the validation split: per-class accuracy and the confusion
   matrix (the checkpoint's online probe, ``val/probe_acc1``, is quoted beside it when the run has
   a ``metrics.json``). A 2-D map of the validation embeddings coloured by class: t-SNE (van der
   Maaten and Hinton, JMLR 2008) up to :data:`TSNE_MAX_POINTS` points, PCA above.
3. **What counts as "same".** The training recipe, and per augmentation family a measured
   invariance score (:func:`invariance`, :func:`measure_invariance`), for the encoder and for an
   untrained encoder of the same architecture, in the spirit of Ericsson, Gouk and Hospedales,
   "Why do self-supervised models transfer? Investigating the impact of invariance on downstream
   tasks" (arXiv:2111.11398).
4. **What is discarded.** Linear read-outs of each nuisance attribute the recipe varies, from
   pixels, features, embeddings and the untrained twin, beside the class read-out
   (:mod:`.discarded`).
5. **Hidden threshold rules.** One threshold set on the whole validation set for "same item if
   cosine ≥ t" and for the probe's "class c if p ≥ t", per group: false-match, true-match,
   positive, error and false-positive rates, the worst/best ratio and what chance gives
   (:mod:`.thresholds`, :mod:`vicreg_lightning.metrics.thresholds`).
6. **Stability across groups and domains.** Per group (the classes, or the groups of
   ``--groups-csv``: :mod:`.metadata`; with ``--domain``, another data set as one more group):
   RankMe at equal sample count, kNN accuracy, and the Fréchet distance between Gaussians fitted to
   the group's features and to the rest's (:func:`frechet_distance`), flagged by
   :func:`outlier_flags`.

Scaling: features are extracted batch by batch on the chosen device (``--device``, CUDA when
available; the spectra and group distances are computed there too on CUDA); every split is capped
at ``--max-samples`` images (a seeded random subset), the invariance measurement at
``--invariance-samples``, t-SNE at :data:`TSNE_MAX_POINTS`, the same-item threshold audit at
:data:`~vicreg_lightning.report.thresholds.THRESHOLD_MAX_SAMPLES`. No matrix is larger than
``D×D``, ``N×N`` or ``N×classes`` for the capped ``N``.

The package: :mod:`.source` (what the report reads), :mod:`.metadata` (groups from a CSV), one
module per section, each with its measurement, table, figure and keys of ``report.json``
(:mod:`.health`, :mod:`.probes`, :mod:`.invariance`, :mod:`.discarded`, :mod:`.thresholds`,
:mod:`.groups`; the pure metrics are :mod:`vicreg_lightning.metrics`), :mod:`.plotting` and
:mod:`.document` (how they are shown), :mod:`.write` (:func:`write_report`: the sections in
turn) and :mod:`.__main__` (``python -m``; the command line is :func:`vicreg_lightning.cli.report`).
"""

from __future__ import annotations

from vicreg_lightning.report.document import Document
from vicreg_lightning.report.health import CORRELATION_BLOCK, STD_THRESHOLD
from vicreg_lightning.report.groups import GroupStats, group_stability
from vicreg_lightning.report.invariance import (
    FAMILIES,
    Encoder,
    FamilyInvariance,
    RecipeEntry,
    measure_invariance,
    single_family_view,
    training_recipe,
)
from vicreg_lightning.report.probes import KNN_K, KNN_TEMPERATURE, TSNE_MAX_POINTS, linear_probe, two_d_map
from vicreg_lightning.report.config import ReportOptions, report_options
from vicreg_lightning.report.write import FIGURES, write_report
from vicreg_lightning.report.source import (
    SPACES,
    LoadedEncoder,
    capped,
    default_out,
    extract,
    load_for_report,
    untrained_twin,
)

__all__ = [
    "CORRELATION_BLOCK", "FAMILIES", "FIGURES", "KNN_K", "KNN_TEMPERATURE", "SPACES",
    "STD_THRESHOLD", "TSNE_MAX_POINTS", "Document", "Encoder", "FamilyInvariance", "GroupStats",
    "LoadedEncoder", "RecipeEntry", "ReportOptions", "capped", "default_out", "extract",
    "group_stability", "linear_probe", "load_for_report", "measure_invariance", "report_options",
    "single_family_view", "training_recipe", "two_d_map", "untrained_twin", "write_report",
]

