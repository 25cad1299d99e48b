"""Evaluation: lm-eval runs with identical settings for base and fine-tuned, scoring, the LLM judge, task folders."""
