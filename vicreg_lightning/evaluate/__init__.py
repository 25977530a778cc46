"""Offline evaluation of pretrained weights: ``run(cfg) -> metrics`` (``vicreg-eval``, ``eval.py``).

The protocols are VICReg's (Bardes, Ponce, LeCun, ICLR 2022, §5 and Appendix C.2; the official
``evaluate.py``), on the labelled images of a data set's train split, scored on its validation
split:

- **linear**: a linear layer (weights N(0, 0.01), bias 0) on the frozen backbone in eval mode,
  cross-entropy, SGD momentum 0.9, lr 0.02, weight decay 1e-6, batch 256, 100 epochs, cosine
  (per epoch). By default the features of the un-augmented training images are computed once and
  the layer trains on them in seconds; ``train_augment=true`` is the paper's exact protocol:
  random-resized crops and flips, the backbone runs on every batch (digits: 0.931 top-1 in 131 s,
  against 0.944 in 1 s on features).
- **knn**: weighted k-NN (k = 20 and 200, T = 0.07, cosine similarity; :mod:`vicreg_lightning.metrics.knn`)
  of the validation features among the training features, also on the expander's embeddings on
  request.
- **semi_supervised**: backbone and linear layer fine-tuned together on a seeded, class-balanced
  1% or 10% of the labelled training images (SimCLR's splits are per-class fractions of ImageNet):
  20 epochs, batch 256, no weight decay, encoder lr 0.03 / head lr 0.08 (1%), 0.01 / 0.1 (10%).

"Random-resized crop and flip" are the training run's own crop scale, ratio and flip probability
(``augment``), without colour, blur or solarisation: on ImageNet with ``augment=official`` that is
the official evaluation's ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip``; on digits it keeps
the mild crops and no flips the digits were trained with. Validation images get the run's
``eval_transform`` (resize, centre crop). Data and augmentations default to the training run's.
"""

from vicreg_lightning.evaluate.config import (
    EvalConfig,
    KNNEvalConfig,
    PROTOCOLS,
    LinearEvalConfig,
    SemiSupervisedConfig,
    SemiSupervisedSplit,
    check_eval_config,
    resolve_data,
)
from vicreg_lightning.evaluate.data import class_balanced_subset, labelled_part, labels_of, train_transform
from vicreg_lightning.evaluate.protocols import (
    feature_batches,
    frozen_backbone_batches,
    knn_eval,
    linear_eval,
    one_cpu_thread,
    semi_supervised_eval,
    topk_accuracy,
)
from vicreg_lightning.evaluate.run import pick_device, run

__all__ = [
    "EvalConfig", "KNNEvalConfig", "LinearEvalConfig", "PROTOCOLS", "SemiSupervisedConfig", "SemiSupervisedSplit",
    "check_eval_config", "class_balanced_subset", "feature_batches", "frozen_backbone_batches", "knn_eval",
    "labelled_part", "labels_of", "linear_eval", "one_cpu_thread", "pick_device", "resolve_data", "run",
    "semi_supervised_eval", "topk_accuracy", "train_transform",
]
