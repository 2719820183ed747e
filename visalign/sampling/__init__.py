"""Samplers that keep what online methods train on: every transition and its log-probability (SPO, GRPO-style RL)."""
