"""Preference data: sources, schemas and tokenization, collators, caches (reference log-probs, latents)."""
