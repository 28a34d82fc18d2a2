"""Layer 4: training a model on the mixture: the LightningModule, its optimizer and schedule, callbacks,
checkpoints, FSDP and the retention methods."""
