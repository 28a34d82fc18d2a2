"""Layer 3: scoring a model: held-out bits per byte, lm-evaluation-harness tasks and the built-in probes."""
