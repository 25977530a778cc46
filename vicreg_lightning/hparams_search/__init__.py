"""The hyper-parameter search engine (Optuna) behind ``-m hparams_search=vicreg_optuna`` and
``vicreg-search``: the search space (:mod:`.space`), the study (:mod:`.study`), label-free pruning
inside a run (:mod:`.pruning`) and parallel workers on one machine (:mod:`.workers`). The Hydra
sweeper that drives them is ``hydra_plugins/vicreg_lightning_sweepers/optuna_search.py``."""
