"""The Hydra configs, shipped inside the package (one folder per config group).

The presets start from their group's schema (``defaults: [/schema/<group>@_here_, ...]``), which
:mod:`vicreg_lightning.config` registers with Hydra's ConfigStore when it is imported: Hydra
imports this package to read the configs from it, so the schemas are there first.
"""

import vicreg_lightning.config  # noqa: F401  (registers the schemas)
