"""reward_models: image reward scorers behind one API."""
