"""The reference Monte Carlo: a fast, vectorised stand-in for full Geant4 transport through the
ZDC's neutron (ZN) and proton (ZP) calorimeters, on both sides of the interaction point.

It produces the ground truth this project trains and evaluates on, since real ALICE files cannot be
downloaded here. It is not a detector simulation; it keeps the features that make the learning
problem hard:

* particles fly in a straight line from their vertex to the ZDC, 112.5 m away on the side they fly
  to; the separator dipole bends charged ones in x by their magnetic rigidity (zdc_sim/geometry.py
  defines the detectors and that rule), so neutral particles reach the ZN, spectator protons and
  light positive fragments the ZP, and most produced charged particles neither;
* hadrons (n, p, pi, K, fragments) shower with large event-to-event fluctuations: the deposited
  fraction, the start depth (and so the longitudinal leakage), the core / halo mix and a random
  number of randomly placed sub-showers all change from one simulation of the same particle to the
  next; a fragment of A nucleons is A showers on top of each other, so it fluctuates less;
* photons and electrons make narrow electromagnetic showers that barely change from run to run;
* each fibre counts Cherenkov photons drawn from a Poisson law whose mean is proportional to the
  energy deposited in it; the ZP (brass, 4 mm fibre pitch) has wider showers in cm, a shorter depth
  in interaction lengths and fewer photons per GeV than the ZN (tungsten, 1.6 mm pitch).

Every constant is documented here and in data/README.md. Results are deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from scipy.special import ndtr

from . import geometry
from .errors import ConfigError
from .features import INDEX, N_FEATURES
from .species import EM_PDG, SPECIES, nucleons

BEAM_GEV_PER_NUCLEON = geometry.BEAM_GEV_PER_NUCLEON

# --- the particle mix the sampler draws (shares of particles) ---------------------------------
MIX = {2112: 0.39, 2212: 0.13, 22: 0.17, 211: 0.04, -211: 0.04, 130: 0.05, 321: 0.02, -321: 0.02, 11: 0.04,
       -11: 0.04, 1000010020: 0.025, 1000010030: 0.01, 1000020030: 0.01, 1000020040: 0.015}
C_SIDE_SHARE = 0.5  # both beams: half the particles fly to the C side (pz < 0)
SPECTATOR_SHARE = 0.7  # of neutrons and protons: beam-energy spectators; the rest are fragments
SPECTATOR_SIGMA_GEV = 100.0  # spread of spectator energies per nucleon (Fermi motion, boosted)
FRAGMENT_GEV = (200.0, 2500.0)  # log-uniform energies of lighter fragmentation nucleons
PRODUCED_GEV = {22: (5.0, 500.0), 11: (5.0, 300.0), -11: (5.0, 300.0)}  # log-uniform
MESON_GEV = (20.0, 1000.0)  # log-uniform energies of pions and kaons
SPECTATOR_THETA_RAD = 40e-6  # Rayleigh scale of polar angles: Fermi p_T ~ 0.1 GeV at 2.5 TeV
PRODUCED_THETA_RAD = 150e-6  # forward-produced particles
WIDE_SHARE, WIDE_THETA_RAD = 0.10, 400e-6  # a tail of wider angles that mostly misses the face
PRIMARY_VERTEX_SIGMA_M = (1e-4, 1e-4, 0.06)  # luminous region x, y, z; every particle is primary


@dataclass(frozen=True)
class Showers:
    """The shower physics of one calorimeter (see data/README.md for sources)."""

    photons_per_gev: float  # mean Cherenkov photons counted per GeV deposited
    length_lambda: float  # calorimeter depth in nuclear interaction lengths
    leakage_lambda: float = 1.5  # containment = 1 - exp(-(length_lambda - start) / leakage_lambda)
    had_fraction_beta: tuple = (4.0, 2.0)  # deposited fraction ~ Beta(a, b): mean 0.67, sd 0.18
    had_core_cm: tuple = (0.20, 0.35)  # uniform core width (Gaussian sigma)
    had_halo_cm: tuple = (0.9, 1.5)  # uniform halo width
    had_halo_share: tuple = (0.25, 0.55)  # uniform share of the deposit in the halo
    sub_shower_mean: float = 2.5  # Poisson number of sub-showers, capped at SUB_SHOWER_MAX
    sub_shower_offset_cm: float = 1.0  # Gaussian offset of each sub-shower from the impact point, per axis
    sub_shower_cm: float = 0.35  # sub-shower width
    sub_shower_share: tuple = (0.1, 0.4)  # uniform share of the deposit in all sub-showers together
    em_fraction: tuple = (0.92, 0.01)  # deposited fraction ~ Normal(mean, sd)
    em_core_cm: float = 0.15
    em_halo_cm: float = 0.6
    em_halo_share: float = 0.08


def _scaled(values: tuple, factor: float) -> tuple:
    return tuple(v * factor for v in values)


# Lateral sizes in the ZP scale with the absorbers' interaction length (hadronic) and Moliere radius
# (electromagnetic): brass with 4 mm fibre spacing against tungsten alloy with 1.6 mm.
ZP_HADRONIC_WIDER, ZP_EM_WIDER = 1.6, 1.7
SHOWERS = {
    "zn": Showers(photons_per_gev=50.0, length_lambda=8.7),
    "zp": Showers(
        photons_per_gev=17.0, length_lambda=8.2,
        had_core_cm=_scaled((0.20, 0.35), ZP_HADRONIC_WIDER), had_halo_cm=_scaled((0.9, 1.5), ZP_HADRONIC_WIDER),
        sub_shower_offset_cm=1.0 * ZP_HADRONIC_WIDER, sub_shower_cm=0.35 * ZP_HADRONIC_WIDER,
        em_fraction=(0.90, 0.015), em_core_cm=0.15 * ZP_EM_WIDER, em_halo_cm=0.6 * ZP_EM_WIDER),
}
SUB_SHOWER_MAX = 6
MAX_NUCLEONS = 4  # the heaviest fragment sampled (alpha)

# Each shower is a sum of at most this many separable Gaussian components: core, halo, sub-showers.
_N_COMPONENTS = 2 + SUB_SHOWER_MAX
CHUNK_PARTICLES = 512  # generation works in fixed chunks so results depend on the seed alone


def _log_uniform(rng, low, high, n):
    return np.exp(rng.uniform(np.log(low), np.log(high), n))


def sample_particles(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw n particles of the forward mix the ZDC sees, half of them flying to the C side:
    features (n, 9) float32 and pdg (n,) int32."""
    codes = np.array(list(MIX))
    pdg = rng.choice(codes, size=n, p=np.array(list(MIX.values())) / sum(MIX.values())).astype(np.int32)
    mass_gev = np.array([SPECIES[int(c)][1] for c in pdg]) / 1000.0
    charge = np.array([SPECIES[int(c)][2] for c in pdg], dtype=np.float64)
    a = nucleons(pdg)

    nucleon = np.isin(pdg, (2112, 2212))
    fragment = a > 1
    spectator = (nucleon & (rng.random(n) < SPECTATOR_SHARE)) | fragment
    energy = _log_uniform(rng, *MESON_GEV, n)
    for code, (low, high) in PRODUCED_GEV.items():
        sel = pdg == code
        energy[sel] = _log_uniform(rng, low, high, sel.sum())
    energy[nucleon] = _log_uniform(rng, *FRAGMENT_GEV, nucleon.sum())
    # A spectator of A nucleons: A x the beam's energy per nucleon, Fermi spread sqrt(A) x a nucleon's.
    a_spec = np.maximum(a[spectator], 1)
    energy[spectator] = rng.normal(BEAM_GEV_PER_NUCLEON * a_spec, SPECTATOR_SIGMA_GEV * np.sqrt(a_spec))
    energy = np.maximum(energy, mass_gev + 1.0)

    # Transverse (Fermi) momentum of a fragment grows as sqrt(A), its momentum as A: angle / sqrt(A).
    theta_scale = np.where(spectator, SPECTATOR_THETA_RAD / np.sqrt(np.maximum(a, 1)), PRODUCED_THETA_RAD)
    theta_scale = np.where(rng.random(n) < WIDE_SHARE, WIDE_THETA_RAD, theta_scale)
    theta = rng.rayleigh(theta_scale)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    p = np.sqrt(energy**2 - mass_gev**2)
    px, py, pz = p * np.sin(theta) * np.cos(phi), p * np.sin(theta) * np.sin(phi), p * np.cos(theta)
    vertex = rng.normal(0.0, PRIMARY_VERTEX_SIGMA_M, size=(n, 3))
    c_side = rng.random(n) < C_SIDE_SHARE
    pz[c_side] *= -1  # the other beam's direction; the luminous region is symmetric in z

    features = np.empty((n, N_FEATURES), dtype=np.float64)
    features[:, INDEX["energy"]] = energy
    features[:, [INDEX["vx"], INDEX["vy"], INDEX["vz"]]] = vertex
    features[:, INDEX["px"]], features[:, INDEX["py"]], features[:, INDEX["pz"]] = px, py, pz
    features[:, INDEX["mass"]] = mass_gev * 1000.0
    features[:, INDEX["charge"]] = charge
    return features.astype(np.float32), pdg


def _shower_components(features, pdg, det: geometry.Detector, rng):
    """Gaussian components of every shower in `det`: centres (n, C, 2) cm from the face centre,
    widths (n, C) cm, and deposited energies (n, C) GeV. Unused components carry zero energy."""
    physics = SHOWERS[det.name]
    n = len(features)
    energy = features[:, INDEX["energy"]].astype(np.float64)
    x, y = geometry.impact_point_cm(features, det)
    em = np.isin(pdg, EM_PDG)

    centres = np.empty((n, _N_COMPONENTS, 2))
    centres[:] = np.stack([x, y], axis=1)[:, None, :]
    widths = np.empty((n, _N_COMPONENTS))
    shares = np.zeros((n, _N_COMPONENTS))

    # Hadronic: every quantity fluctuates from one simulation to the next. A fragment of A nucleons
    # deposits the mean of A independent nucleon fractions (A showers on top of each other).
    a = np.clip(nucleons(pdg), 1, MAX_NUCLEONS)
    per_nucleon = rng.beta(*physics.had_fraction_beta, (n, MAX_NUCLEONS))
    start = rng.exponential(1.0, (n, MAX_NUCLEONS))  # first interaction depth, in interaction lengths
    per_nucleon *= np.clip(1.0 - np.exp(-(physics.length_lambda - start) / physics.leakage_lambda), 0.0, 1.0)
    used = np.arange(MAX_NUCLEONS)[None, :] < a[:, None]
    fraction = (per_nucleon * used).sum(1) / a
    widths[:, 0] = rng.uniform(*physics.had_core_cm, n)
    widths[:, 1] = rng.uniform(*physics.had_halo_cm, n)
    halo = rng.uniform(*physics.had_halo_share, n)
    n_sub = np.minimum(rng.poisson(physics.sub_shower_mean, n), SUB_SHOWER_MAX)
    sub_total = np.where(n_sub > 0, rng.uniform(*physics.sub_shower_share, n), 0.0)
    sub_used = np.arange(SUB_SHOWER_MAX)[None, :] < n_sub[:, None]
    sub_weights = rng.exponential(1.0, (n, SUB_SHOWER_MAX)) * sub_used  # Dirichlet(1) split
    sub_weights /= np.maximum(sub_weights.sum(axis=1, keepdims=True), 1e-12)
    centres[:, 2:, :] += rng.normal(0.0, physics.sub_shower_offset_cm, (n, SUB_SHOWER_MAX, 2))
    widths[:, 2:] = physics.sub_shower_cm
    shares[:, 0] = (1 - halo) * (1 - sub_total)
    shares[:, 1] = halo * (1 - sub_total)
    shares[:, 2:] = sub_total[:, None] * sub_weights

    # Electromagnetic: narrow and nearly identical every time.
    em_fraction = np.clip(rng.normal(*physics.em_fraction, n), 0.0, 1.0)
    fraction = np.where(em, em_fraction, fraction)
    widths[em, 0], widths[em, 1] = physics.em_core_cm, physics.em_halo_cm
    shares[em] = 0.0
    shares[em, 0], shares[em, 1] = 1 - physics.em_halo_share, physics.em_halo_share
    centres[em, 2:, :] = centres[em, :1, :]
    return centres, widths, shares * (energy * fraction)[:, None]


def simulate(features: np.ndarray, pdg: np.ndarray, rng: np.random.Generator, detector="zn") -> np.ndarray:
    """One independent simulation of each particle in `detector` (on the side it flies to): photon
    counts (n, rows, columns) float32. Particles that do not reach it (geometry.reaches) leave
    exactly nothing and draw no random numbers."""
    det = geometry.detector(detector)
    features = np.asarray(features, dtype=np.float32)
    pdg = np.asarray(pdg)
    out = np.zeros((len(features), *det.shape), np.float32)
    reached = np.flatnonzero(geometry.reaches(features, det))
    if len(reached) == 0:
        return out
    centres, widths, deposits = _shower_components(features[reached], pdg[reached], det, rng)
    x_edges, y_edges = det.pixel_edges_cm()
    # Fraction of each Gaussian component inside each fibre column and row (separable Gaussians);
    # whatever falls outside the face is lost, which is what empties the misses.
    cdf_x = ndtr((x_edges[None, None, :] - centres[..., 0:1]) / widths[..., None])
    cdf_y = ndtr((y_edges[None, None, :] - centres[..., 1:2]) / widths[..., None])
    in_col = cdf_x[..., 1:] - cdf_x[..., :-1]  # (n, C, columns)
    in_row = cdf_y[..., :-1] - cdf_y[..., 1:]  # rows run from top (high y) to bottom
    deposit = np.einsum("nc,nci,ncj->nij", deposits, in_row, in_col)
    out[reached] = rng.poisson(np.maximum(deposit, 0.0) * SHOWERS[det.name].photons_per_gev)
    return out


@dataclass(frozen=True)
class Chunk:
    """A block of simulated entries; repeated simulations of one particle share particle_id."""

    features: np.ndarray  # (m, 9) float32
    pdg: np.ndarray  # (m,) int32
    particle_id: np.ndarray  # (m,) int64
    responses: dict = field(default_factory=dict)  # detector name -> (m, rows, columns) float32

    @property
    def response(self) -> np.ndarray:
        """The ZN responses (the default detector)."""
        return self.responses["zn"]

    def parts(self) -> dict[str, np.ndarray]:
        """The chunk as the parts `rootio.write_dataset` takes (features, pdg, particle_id and one
        response per detector)."""
        from . import rootio

        out = {rootio.FEATURES: self.features, rootio.PDG: self.pdg, rootio.PARTICLE_ID: self.particle_id}
        out.update({rootio.response_part(name): values for name, values in self.responses.items()})
        return out


def generate(n_particles: int, repeats: int, seed: int, first_id: int = 0, *,
             detectors=tuple(geometry.DETECTORS), reaching: str | None = None) -> Iterator[Chunk]:
    """Sample particles and simulate each `repeats` times in each of `detectors`, CHUNK_PARTICLES
    sampled particles at a time; `reaching` keeps only the particles that reach that detector
    (sampling on until n_particles are kept).

    Entries of one particle are consecutive. Each chunk draws from its own stream derived from
    (seed, chunk index), so the output depends on the seed alone.
    """
    if n_particles < 1 or repeats < 1:
        raise ConfigError(f"expected at least 1 particle and 1 repeat; found {n_particles} and {repeats}")
    detectors = [geometry.detector(d).name for d in detectors]
    if reaching is not None:
        reaching = geometry.detector(reaching).name
    kept, index = 0, 0
    while kept < n_particles:
        rng = np.random.default_rng([seed, index])
        index += 1
        features, pdg = sample_particles(CHUNK_PARTICLES if reaching else min(CHUNK_PARTICLES, n_particles - kept), rng)
        if reaching:
            keep = np.flatnonzero(geometry.reaches(features, reaching))[: n_particles - kept]
            features, pdg = features[keep], pdg[keep]
            if len(features) == 0:
                continue
        m = len(features)
        features, pdg = np.repeat(features, repeats, axis=0), np.repeat(pdg, repeats)
        ids = np.repeat(np.arange(first_id + kept, first_id + kept + m, dtype=np.int64), repeats)
        kept += m
        yield Chunk(features, pdg, ids, {d: simulate(features, pdg, rng, d) for d in detectors})
