"""Sweeps: the Optuna study behind the Hydra sweeper, pruning from inside training, and the sweep summary.

Training reaches a sweep through one name: `pruning_callback` (report the objective, stop when pruned).
"""

from claire.sweep.optuna_study import pruning_callback

__all__ = ["pruning_callback"]
