"""Training: config checks, data preprocessing, model loading, the trl SFT run, and dry-run planning."""
