"""Closing the loop: collect flagged frames -> label them -> retrain the MLIP and its PROBE head.

`collect` picks a diverse, duplicate-free pool in the frozen feature space, `label` runs a
reference calculator on it (resumable), `retrain` fine-tunes MACE with mace-torch's own
trainer and refits the head. Each step reads and writes plain extxyz files.
"""

from __future__ import annotations
