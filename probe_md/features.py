"""Backbone predictions (energy, forces, frozen features) over a data set, cached on disk.

The cache key hashes the backbone fingerprint and every structure's numbers, positions,
cell and pbc, so a changed model or data file never reuses stale features.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import ase
import numpy as np
from tqdm.auto import tqdm

from probe_md.backbone.base import Backbone, StructurePrediction
from probe_md.io_utils import atomic_output


def structures_hash(structures: Sequence[ase.Atoms]) -> str:
    digest = hashlib.sha256()
    for atoms in structures:
        for array in (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def cache_key(backbone: Backbone, structures: Sequence[ase.Atoms]) -> str:
    return hashlib.sha256(
        (backbone.fingerprint + structures_hash(structures)).encode()
    ).hexdigest()[:24]


def predict_dataset(
    backbone: Backbone,
    structures: Sequence[ase.Atoms],
    cache_dir: str | os.PathLike | None = None,
    description: str = "backbone",
    chunk_size: int = 64,
    progress: bool = True,
) -> list[StructurePrediction]:
    """Predictions for every structure, loaded from / stored in `cache_dir` when given."""
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"predictions-{cache_key(backbone, structures)}.npz"
        if cache_file.is_file():
            return _load_predictions(cache_file)
    predictions: list[StructurePrediction] = []
    bar = tqdm(total=len(structures), desc=description, unit="structure", disable=not progress)
    for start in range(0, len(structures), chunk_size):
        chunk = list(structures[start : start + chunk_size])
        predictions.extend(backbone.predict(chunk))
        bar.update(len(chunk))
    bar.close()
    if cache_file is not None:
        _save_predictions(cache_file, predictions)
    return predictions


def _save_predictions(path: Path, predictions: Sequence[StructurePrediction]) -> None:
    with atomic_output(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(
                handle,
                energy=np.array([p.energy for p in predictions]),
                counts=np.array([len(p.forces) for p in predictions]),
                forces=np.concatenate([p.forces for p in predictions]),
                features=np.concatenate([p.features for p in predictions]),
            )


def _load_predictions(path: Path) -> list[StructurePrediction]:
    with np.load(path, allow_pickle=False) as stored:
        splits = np.cumsum(stored["counts"])[:-1]
        forces = np.split(stored["forces"], splits)
        features = np.split(stored["features"], splits)
        return [
            StructurePrediction(float(e), f, x)
            for e, f, x in zip(stored["energy"], forces, features)
        ]


def head_inputs(predictions: Sequence[StructurePrediction], reads_force_norm: bool) -> list[np.ndarray]:
    """Per-structure head inputs: the backbone's features, plus the MLIP's own per-atom force
    norm as a last column for heads that read it (see probe_md.head.force_norm_column)."""
    if not reads_force_norm:
        return [p.features for p in predictions]
    import torch

    from probe_md.head import force_norm_column

    return [
        np.concatenate([p.features, force_norm_column(torch.from_numpy(np.asarray(p.forces, np.float64))).numpy()
                        .astype(p.features.dtype)], axis=1)
        for p in predictions
    ]
