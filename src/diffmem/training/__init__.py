"""Training of the small world models: AdamW, EMA, CFG dropout, resumable safetensors checkpoints."""
