"""The shared preference-loss core."""
