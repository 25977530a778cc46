"""Two-view data: data sets (``datasets``), augmentations (``augment``), the DataModule
(``datamodule``)."""
