"""Model + batch -> per-sample log-likelihood (text tokens, diffusion ELBO surrogate, DDIM step log-prob)."""
