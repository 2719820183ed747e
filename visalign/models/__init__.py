"""Model loading: causal LMs, VLMs and processors, SD/SDXL components, LoRA setup."""
