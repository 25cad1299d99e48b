"""The causal task suite: questions with exact answers and gold graphs, generated offline, split by graph shape.

Other stages use the suite through these names: `generate_rows` (the question generator) and `default_splits` (the
suite in memory with its shipped settings, as the claire_causal lm-eval task loads it).
"""

from claire.causal.questions import generate_rows
from claire.causal.suite import default_splits

__all__ = ["default_splits", "generate_rows"]
