"""The four calorimeters of the ALICE ZDC, each defined once: a neutron ZN and a proton ZP on each
side of the interaction point. Everything that needs a shape, a pitch, a face or the PMT channels
reads them from a `Detector` here (the reference Monte Carlo, the networks, ROOT I/O, metrics,
Simulator, service and exports).

Facts from ALICE O2, Detectors/ZDC/base/include/ZDCBase/Geometry.h (half-dimensions in cm):
ZN {3.52, 3.52, 50}, sectors {2, 2}, divisions {11, 11}, at (0, 0, +11259.8 / -11261.3) cm;
ZP {11.2, 6, 75}, sectors {4, 1}, divisions {7, 15}, at (24.35, 0, +11251.8 / -11253.3) cm.

Image convention (both detectors, both sides): pixel (i, j) with i the row and j the column; the
column runs along x (left to right, increasing x), the row along y (row 0 at the top, highest y),
in ALICE's global x-y frame. Flattened in C order, pixel (i, j) is at j + i * columns, the index
O2 uses (`Nx * y + x`, Detectors/ZDC/simulation/src/Detector.cxx, FastSimToHits).

PMT channels (both detectors): channel 5 ("common") reads every pixel with (i + j) odd, channels
1-4 ("towers") the pixels with (i + j) even, split by tower: ZN quadrants (1 top-left, 2
top-right, 3 bottom-left, 4 bottom-right), ZP four strips side by side along x (1 at lowest x),
as O2's geometry has them (sectors {4, 1}; tower floor(4 x / 56) + 1 in FastSimToHits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .errors import ConfigError, DataError

N_CHANNELS = 5
CHANNEL_NAMES = tuple(f"channel_{k}" for k in range(1, N_CHANNELS + 1))
# Below this mean total, Poisson counting alone gives > 14 % relative spread: such responses
# (particles that miss the face) measure counting statistics, not shower physics.
MIN_MEAN_COUNTS = 50.0
SIDES = ("A", "C")  # A at +z, C at -z


@dataclass(frozen=True)
class Detector:
    """One calorimeter type; the A and C sides are mirror images of each other through the plane
    z = 0 (x and y unchanged), so one definition and one trained model serve both."""

    name: str  # "zn" or "zp": the key in DETECTORS, checkpoints, files and URLs
    title: str
    absorber: str
    shape: tuple[int, int]  # (rows along y, columns along x)
    pitch_cm: float  # fibre pitch, the same along x and y
    centre_x_cm: float  # face centre in ALICE's global x (y = 0 for both)
    face_z_cm: dict = field(default_factory=dict)  # side -> z of the front face
    towers: str = "quadrants"  # how channels 1-4 split the even-parity fibres: "quadrants" | "strips"
    # A particle reaches the detector when its impact point lies within the face widened by this
    # margin on every edge: beyond it the reference showers leave no photon in the fibres.
    reach_margin_cm: float = 6.0

    @property
    def n_pixels(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def face_cm(self) -> tuple[float, float]:
        """(width along x, height along y) of the front face."""
        return self.shape[1] * self.pitch_cm, self.shape[0] * self.pitch_cm

    @cached_property
    def pixel_x_cm(self) -> np.ndarray:
        """(columns,) fibre centres along x from the face centre, left to right, float64."""
        return (np.arange(self.shape[1]) - (self.shape[1] - 1) / 2) * self.pitch_cm

    @cached_property
    def pixel_y_cm(self) -> np.ndarray:
        """(rows,) fibre centres along y from the face centre, top (highest y) to bottom, float64."""
        return -(np.arange(self.shape[0]) - (self.shape[0] - 1) / 2) * self.pitch_cm

    def pixel_edges_cm(self) -> tuple[np.ndarray, np.ndarray]:
        """Edges of the fibre cells: x along columns (increasing), y along rows (decreasing)."""
        x = (np.arange(self.shape[1] + 1) - self.shape[1] / 2) * self.pitch_cm
        y = -(np.arange(self.shape[0] + 1) - self.shape[0] / 2) * self.pitch_cm
        return x, y

    @cached_property
    def tower_index(self) -> np.ndarray:
        """(rows, columns) tower 0-3 of every pixel, both parities (the tower's region of the face)."""
        return quadrant_towers(self.shape) if self.towers == "quadrants" else strip_towers(self.shape)

    @cached_property
    def masks(self) -> np.ndarray:
        """Boolean (5, rows, columns); every pixel belongs to exactly one channel."""
        return channel_masks(self.shape, self.tower_index)

    @cached_property
    def masks_flat(self) -> np.ndarray:
        return self.masks.reshape(N_CHANNELS, -1).astype(np.float64)


def quadrant_towers(shape: tuple[int, int]) -> np.ndarray:
    """Tower index 0-3 of every pixel by quadrant (top-left, top-right, bottom-left, bottom-right):
    the ZN's, and the split published research code applies to the 56 x 30 ZP image too."""
    i, j = np.indices(shape)
    return 2 * (i >= shape[0] // 2) + (j >= shape[1] // 2)


def strip_towers(shape: tuple[int, int]) -> np.ndarray:
    """Tower index 0-3 of every pixel by strip along x, floor(4 j / columns): the ZP as built."""
    _, j = np.indices(shape)
    return (4 * j) // shape[1]


def channel_masks(shape: tuple[int, int], towers: np.ndarray) -> np.ndarray:
    """(5, rows, columns): towers 1-4 read even (i + j), the common channel 5 odd (i + j)."""
    i, j = np.indices(shape)
    even = (i + j) % 2 == 0
    return np.stack([even & (towers == t) for t in range(4)] + [~even])


# Pitch = face / fibres (2 x half-dimension / (2 x sectors x divisions)), as O2 derives it.
ZN = Detector("zn", "neutron calorimeter", "tungsten alloy", (44, 44), 7.04 / 44, 0.0,
              {"A": 11259.8, "C": -11261.3}, "quadrants", reach_margin_cm=6.0)
ZP = Detector("zp", "proton calorimeter", "brass", (30, 56), 22.4 / 56, 24.35,
              {"A": 11251.8, "C": -11253.3}, "strips", reach_margin_cm=9.0)
DETECTORS = {d.name: d for d in (ZN, ZP)}


def detector(name: str | Detector) -> Detector:
    """The Detector named `name` ('zn' or 'zp', any case), or ConfigError naming the choices."""
    if isinstance(name, Detector):
        return name
    found = DETECTORS.get(str(name).lower())
    if found is None:
        raise ConfigError(f"unknown detector {name!r}; expected one of {sorted(DETECTORS)}")
    return found


def for_shape(shape) -> Detector:
    """The detector whose response image has this (rows, columns) shape."""
    for d in DETECTORS.values():
        if tuple(shape) == d.shape:
            return d
    expected = " or ".join(f"(..., {r}, {c}) ({d.name})" for d, (r, c) in ((d, d.shape) for d in DETECTORS.values()))
    raise DataError(f"expected responses of shape {expected}; found {tuple(shape)}")


def channel_sums(responses):
    """Channel values of a batch of responses (..., rows, columns) -> (..., 5), numpy or torch alike;
    the detector is the one whose image has that shape.

    Counts, not log counts: convert log(1 + x) images back with expm1 before calling.
    """
    det = for_shape(responses.shape[-2:])
    flat = responses.reshape(*responses.shape[:-2], det.n_pixels)
    if isinstance(responses, np.ndarray):
        return flat.astype(np.float64) @ det.masks_flat.T
    import torch  # torch only when a tensor is passed, so the numpy path stays light

    masks = torch.as_tensor(det.masks_flat, dtype=flat.dtype, device=flat.device)
    return flat @ masks.T


# --- how a particle reaches a detector ----------------------------------------------------------
# Between the interaction point and the ZDC the separator dipole D1 bends a charged particle in x
# by DEFLECTION_GEV_CM * q / |p| (q in e, |p| in GeV): an angle inversely proportional to its
# magnetic rigidity. The constant puts a spectator proton of the beam's momentum per nucleon
# (2510 GeV, Pb-Pb at 5.02 TeV) at the ZP's centre, where the ZP is placed to catch them; the
# beam itself (rigidity 208 / 82 x a proton's) lands at 9.6 cm, between the ZN and the ZP. Neutral
# particles fly straight to the ZN. Both sides bend toward +x (O2 puts both ZPs at x = +24.35 cm).
BEAM_GEV_PER_NUCLEON = 2510.0
DEFLECTION_GEV_CM = ZP.centre_x_cm * BEAM_GEV_PER_NUCLEON


def side(features: np.ndarray) -> np.ndarray:
    """(N,) 'A' for particles flying to +z (pz > 0), 'C' otherwise (O2's rule, Detector.cxx)."""
    return np.where(np.asarray(features)[:, 6] > 0, "A", "C")


def to_a_side(features: np.ndarray) -> np.ndarray:
    """The particles as the A side sees them: C-side ones (pz <= 0) mirrored through z = 0 (vz and
    pz negated; x, y and everything else unchanged). The C calorimeters are the A ones mirrored the
    same way, so a C-side particle's response, in the global x-y frame, is its mirror image's."""
    out = np.array(features, copy=True)
    c_side = out[:, 6] <= 0
    out[c_side, 3] *= -1
    out[c_side, 6] *= -1
    return out


def impact_point_cm(features: np.ndarray, det: str | Detector = ZN) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) where each particle crosses the front face of `det` on the side it flies to, in cm
    from that face's centre: a straight line from the vertex, plus D1's bend for charged ones.
    Features in the data card's units (vertex m, momentum GeV, charge e)."""
    det = detector(det)
    f = np.asarray(features, dtype=np.float64)
    a = to_a_side(f)
    vx, vy, vz, px, py, pz = (a[:, k] for k in range(1, 7))
    face_z_m = np.where(f[:, 6] > 0, det.face_z_cm["A"], -det.face_z_cm["C"]) / 100.0
    p = np.sqrt(px**2 + py**2 + pz**2)
    lever = face_z_m - vz
    with np.errstate(divide="ignore", invalid="ignore"):
        moving = pz > 0  # a particle at rest along z reaches neither side
        x = np.where(moving, 100.0 * (vx + px / pz * lever) + DEFLECTION_GEV_CM * f[:, 8] / p, np.inf)
        y = np.where(moving, 100.0 * (vy + py / pz * lever), np.inf)
    return x - det.centre_x_cm, y


def reaches(features: np.ndarray, det: str | Detector = ZN, margin_cm: float | None = None) -> np.ndarray:
    """(N,) True where the impact point is on the face of `det` widened by `margin_cm` (by default
    the detector's reach margin; 0 asks whether it hits the face itself)."""
    det = detector(det)
    margin = det.reach_margin_cm if margin_cm is None else margin_cm
    x, y = impact_point_cm(features, det)
    width, height = det.face_cm
    return (np.abs(x) < width / 2 + margin) & (np.abs(y) < height / 2 + margin)
