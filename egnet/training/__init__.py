"""Training: the loop (``train``), DDP set-up (``distributed``), checkpoints, the loss."""
