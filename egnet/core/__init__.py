"""The bottom layer: configuration, errors, atomic files, storage locations, text and charts,
and the paper's reference numbers. Imports nothing else from egnet (docs/architecture.md)."""
