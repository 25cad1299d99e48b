"""Claire's Optuna sweeper for Hydra multirun (`-m hparams_search=...`), on a released optuna and hydra-core 1.3."""
