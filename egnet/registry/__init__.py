"""The MLflow model registry: register, the champion/challenger gate, promote and rollback,
version listings, run comparison, and the cross-process registry lock."""
