"""Sweeps: the Optuna study behind the Hydra sweeper, pruning from inside training, and the sweep summary."""
