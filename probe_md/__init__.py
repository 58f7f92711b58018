"""PROBE: post-hoc reliability from frozen MLIP backbone embeddings."""

__version__ = "0.1.0"
