"""`python -m claire.causal`: rewrite the shipped sample (claire/data/causal_sample.jsonl); `make sample` runs it."""

from claire.causal.questions import write_sample

write_sample()
