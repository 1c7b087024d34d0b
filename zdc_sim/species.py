"""Particle species and shower classes: facts about particles, not about any simulation of them.

The reference Monte Carlo, the metrics, the regularizers' users and the dataset summary all read
them from here, so that scoring real data never depends on the stand-in physics.
"""

from __future__ import annotations

import numpy as np

HADRONIC, ELECTROMAGNETIC = "hadronic", "electromagnetic"
SHOWER_CLASSES = (HADRONIC, ELECTROMAGNETIC)

# pdg -> (name, mass MeV, charge e, shower class)
SPECIES = {
    2112: ("neutron", 939.565, 0, HADRONIC),
    2212: ("proton", 938.272, 1, HADRONIC),
    211: ("pi+", 139.570, 1, HADRONIC),
    -211: ("pi-", 139.570, -1, HADRONIC),
    130: ("K0L", 497.611, 0, HADRONIC),
    321: ("K+", 493.677, 1, HADRONIC),
    -321: ("K-", 493.677, -1, HADRONIC),
    22: ("gamma", 0.0, 0, ELECTROMAGNETIC),
    11: ("e-", 0.511, -1, ELECTROMAGNETIC),
    -11: ("e+", 0.511, 1, ELECTROMAGNETIC),
    # Light nuclear fragments of the beam nuclei (PDG ion codes 100ZZZAAA0; nuclear masses).
    1000010020: ("deuteron", 1875.613, 1, HADRONIC),
    1000010030: ("triton", 2808.921, 1, HADRONIC),
    1000020030: ("helium3", 2808.391, 2, HADRONIC),
    1000020040: ("alpha", 3727.379, 2, HADRONIC),
}
def nucleons(pdg) -> np.ndarray:
    """Mass number A of each pdg code: from the ion code 100ZZZAAA0, 1 for a nucleon, 0 otherwise."""
    pdg = np.asarray(pdg, dtype=np.int64)
    ion = pdg >= 1000000000
    return np.where(ion, (pdg // 10) % 1000, np.isin(pdg, (2112, 2212)).astype(np.int64))


EM_PDG = tuple(p for p, s in SPECIES.items() if s[3] == ELECTROMAGNETIC)


def shower_class(pdg) -> np.ndarray:
    """Array of HADRONIC / ELECTROMAGNETIC labels for pdg codes (unknown codes are hadronic)."""
    pdg = np.asarray(pdg)
    return np.where(np.isin(pdg, EM_PDG), ELECTROMAGNETIC, HADRONIC)


def species_name(pdg: int) -> str:
    return SPECIES[int(pdg)][0] if int(pdg) in SPECIES else f"pdg {int(pdg)}"
