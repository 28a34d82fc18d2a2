"""Models: load a base (HF directory / hub id / random-init config) and save Hugging Face directories."""
