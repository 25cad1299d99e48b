"""The causal task suite: questions with exact answers and gold graphs, generated offline, and its splits."""
