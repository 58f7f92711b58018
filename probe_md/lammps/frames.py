"""A flagged frame from a running LAMMPS: its atoms gathered to rank 0, and their elements."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def check_element_symbols(symbols: Sequence[str]) -> list[str]:
    """Validate user-given element symbols before any work (one line on a bad one)."""
    from ase.data import chemical_symbols

    symbols = [s.strip() for s in symbols]
    for symbol in symbols:
        if symbol not in chemical_symbols[1:]:
            raise ValueError(f"--elements: {symbol!r} is not a chemical element symbol")
    return symbols


def pair_elements(lmp) -> list[str] | None:
    """Element of each atom type from pair_style probe/mace's own pair_coeff map (None when
    the pair style does not publish one)."""
    from ase.data import chemical_symbols

    try:
        numbers = lmp.extract_pair("probe_atomic_number")
    except Exception:  # noqa: BLE001 - older LAMMPS without extract_pair, or another pair style
        return None
    if not numbers or any(z < 1 for z in numbers[1:]):
        return None
    return [chemical_symbols[int(z)] for z in numbers[1:]]


def elements_from_masses(masses: Sequence[float]) -> list[str]:
    """Guess each atom type's element from its mass (the nearest standard atomic mass)."""
    from ase.data import atomic_masses, chemical_symbols

    return [chemical_symbols[int(np.argmin(np.abs(atomic_masses[1:] - m))) + 1] for m in masses]


def type_elements(lmp, given: Sequence[str] | None, say=print) -> list[str]:
    """Element per atom type: the pair style's map; `given` must agree with it. Without a map
    (a pair style other than probe/mace): `given`, else a guess from the masses, said aloud."""
    ntypes = lmp.extract_global("ntypes")
    mapped = pair_elements(lmp)
    if given is not None and len(given) != ntypes:
        raise ValueError(f"--elements names {len(given)} element(s) for {ntypes} atom type(s)")
    if mapped is not None:
        if given is not None and list(given) != mapped:
            raise ValueError(
                f"--elements {','.join(given)} disagrees with pair_coeff, which maps the atom types "
                f"to {','.join(mapped)}: drop --elements (pair_coeff decides)"
            )
        return mapped
    if given is not None:
        return list(given)
    guessed = elements_from_masses(np.asarray(lmp.numpy.extract_atom("mass"))[1 : ntypes + 1])
    say(f"PROBE: guessed the elements of the atom types from their masses: {','.join(guessed)} "
        "(pass --elements to set them)")
    return guessed


def lammps_cell(lmp) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """(origin [3], cell rows [3,3] as ASE wants them, pbc) of the current box.

    Read with extract_global, not extract_box: extract_box calls Domain::init(), which must
    not run on one rank only in the middle of a step (it hangs the next step under MPI).
    """
    boxlo = lmp.extract_global("boxlo")
    boxhi = lmp.extract_global("boxhi")
    xy, yz, xz = (lmp.extract_global(name) for name in ("xy", "yz", "xz"))
    periodicity = lmp.extract_global("periodicity")
    lengths = np.array(boxhi) - np.array(boxlo)
    cell = np.array([[lengths[0], 0.0, 0.0], [xy, lengths[1], 0.0], [xz, yz, lengths[2]]])
    return np.array(boxlo), cell, [bool(p) for p in periodicity]


def gather_frame(lmp, comm, elements: Sequence[str], nlocal: int, tags, x, importances) -> dict | None:
    """Gather every rank's atoms to rank 0, in atom-id order (independent of the domain
    decomposition): species, positions (box origin at 0), cell, pbc, importances on rank 0;
    None on the others. Collective: every rank must call it."""
    types = np.array(lmp.numpy.extract_atom("type")[:nlocal], dtype=int)
    importances = np.asarray(importances, dtype=float).reshape(-1)[:nlocal]
    local = (np.array(tags[:nlocal], dtype=np.int64), types, np.array(x[:nlocal], dtype=float).reshape(-1, 3),
             importances)
    parts = comm.gather(local, root=0) if comm is not None else [local]
    if parts is None:
        return None
    order = np.argsort(np.concatenate([p[0] for p in parts]))
    types_all = np.concatenate([p[1] for p in parts])[order]
    origin, cell, pbc = lammps_cell(lmp)
    return {
        "species": [elements[t - 1] for t in types_all],
        "positions": np.concatenate([p[2] for p in parts])[order] - origin,
        "cell": cell,
        "importances": np.concatenate([p[3] for p in parts])[order],
        "pbc": pbc,
    }
