"""The reference Monte Carlo: a fast, vectorised stand-in for full Geant4 transport through the ZN.

It produces the ground truth this project trains and evaluates on, since real ALICE files cannot be
downloaded here. It is not a detector simulation; it keeps the features that make the learning
problem hard:

* particles fly in a straight line from their vertex to the ZN face at z = 112.5 m, charged ones
  are deflected in x by a residual field (proportional to charge / momentum); a particle that
  misses the 7.04 x 7.04 cm face leaves at most the tail of its shower in the fibres;
* hadrons (n, p, pi, K) shower with large event-to-event fluctuations: the deposited fraction, the
  start depth (and so the longitudinal leakage), the core / halo mix and a random number of
  randomly placed sub-showers all change from one simulation of the same particle to the next;
* photons and electrons make narrow electromagnetic showers that barely change from run to run;
* each fibre counts Cherenkov photons drawn from a Poisson law whose mean is proportional to the
  energy deposited in it.

Every constant is documented here and in data/README.md. Results are deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from scipy.special import ndtr

from . import geometry
from .errors import ConfigError
from .features import INDEX, N_FEATURES
from .species import EM_PDG, SPECIES

# --- beam line -------------------------------------------------------------------------------
FACE_Z_M = 112.5  # distance of the ZN front face from the interaction point
# Residual horizontal kick downstream of the separation dipole: dx [m] = DEFLECTION_GEV_M * q / |p|.
# 1 GeV m moves a 100 GeV charged pion by 1 cm and a 20 GeV electron by 5 cm (off the face).
DEFLECTION_GEV_M = 1.0
BEAM_GEV_PER_NUCLEON = 2510.0  # Pb-Pb at sqrt(s_NN) = 5.02 TeV

# --- the particle mix the sampler draws (shares of particles) ---------------------------------
MIX = {2112: 0.42, 2212: 0.14, 22: 0.18, 211: 0.04, -211: 0.04, 130: 0.05, 321: 0.02, -321: 0.02, 11: 0.045, -11: 0.045}
SPECTATOR_SHARE = 0.7  # of neutrons and protons: beam-energy spectators; the rest are fragments
SPECTATOR_SIGMA_GEV = 100.0  # spread of spectator energies (Fermi motion, boosted)
FRAGMENT_GEV = (200.0, 2500.0)  # log-uniform energies of lighter fragmentation nucleons
PRODUCED_GEV = {22: (5.0, 500.0), 11: (5.0, 300.0), -11: (5.0, 300.0)}  # log-uniform
MESON_GEV = (20.0, 1000.0)  # log-uniform energies of pions and kaons
SPECTATOR_THETA_RAD = 40e-6  # Rayleigh scale of polar angles: Fermi p_T ~ 0.1 GeV at 2.5 TeV
PRODUCED_THETA_RAD = 150e-6  # forward-produced particles
WIDE_SHARE, WIDE_THETA_RAD = 0.10, 400e-6  # a tail of wider angles that mostly misses the face
PRIMARY_VERTEX_SIGMA_M = (1e-4, 1e-4, 0.06)  # luminous region x, y, z
SECONDARY_SHARE = 0.10  # of produced particles: made downstream in the beam pipe
SECONDARY_Z_M = (1.0, 80.0)  # uniform
SECONDARY_XY_SIGMA_M = 0.005

# --- showers ---------------------------------------------------------------------------------
PHOTONS_PER_GEV = 50.0  # mean Cherenkov photons counted per GeV deposited
ZN_LENGTH_LAMBDA = 8.7  # calorimeter depth in nuclear interaction lengths
LEAKAGE_LAMBDA = 1.5  # containment = 1 - exp(-(ZN_LENGTH_LAMBDA - start) / LEAKAGE_LAMBDA)
HAD_FRACTION_BETA = (4.0, 2.0)  # deposited fraction ~ Beta(a, b): mean 0.67, sd 0.18
HAD_CORE_CM = (0.20, 0.35)  # uniform core width (Gaussian sigma)
HAD_HALO_CM = (0.9, 1.5)  # uniform halo width
HAD_HALO_SHARE = (0.25, 0.55)  # uniform share of the deposit in the halo
SUB_SHOWER_MEAN, SUB_SHOWER_MAX = 2.5, 6  # Poisson number of sub-showers, capped
SUB_SHOWER_OFFSET_CM = 1.0  # Gaussian offset of each sub-shower from the impact point, per axis
SUB_SHOWER_CM = 0.35  # sub-shower width
SUB_SHOWER_SHARE = (0.1, 0.4)  # uniform share of the deposit in all sub-showers together
EM_FRACTION = (0.92, 0.01)  # deposited fraction ~ Normal(mean, sd)
EM_CORE_CM, EM_HALO_CM, EM_HALO_SHARE = 0.15, 0.6, 0.08

# Each shower is a sum of at most this many separable Gaussian components: core, halo, sub-showers.
_N_COMPONENTS = 2 + SUB_SHOWER_MAX
CHUNK_PARTICLES = 512  # generation works in fixed chunks so results depend on the seed alone


def impact_point_cm(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each particle crosses the ZN face plane, in cm from the face centre."""
    f = np.asarray(features, dtype=np.float64)
    vx, vy, vz = f[:, INDEX["vx"]], f[:, INDEX["vy"]], f[:, INDEX["vz"]]
    px, py, pz = f[:, INDEX["px"]], f[:, INDEX["py"]], f[:, INDEX["pz"]]
    p = np.sqrt(px**2 + py**2 + pz**2)
    lever = FACE_Z_M - vz
    with np.errstate(divide="ignore", invalid="ignore"):
        forward = pz > 0
        x = np.where(forward, vx + px / pz * lever + DEFLECTION_GEV_M * f[:, INDEX["charge"]] / p, np.inf)
        y = np.where(forward, vy + py / pz * lever, np.inf)
    return x * 100.0, y * 100.0


def hits_face(features: np.ndarray) -> np.ndarray:
    """True where the particle's straight-line (plus deflection) path crosses the ZN face."""
    x, y = impact_point_cm(features)
    half = geometry.FACE_CM / 2
    return (np.abs(x) < half) & (np.abs(y) < half)


def _log_uniform(rng, low, high, n):
    return np.exp(rng.uniform(np.log(low), np.log(high), n))


def sample_particles(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw n particles of the forward mix the ZN sees: features (n, 9) float32 and pdg (n,) int32."""
    codes = np.array(list(MIX))
    pdg = rng.choice(codes, size=n, p=np.array(list(MIX.values())) / sum(MIX.values())).astype(np.int32)
    mass_gev = np.array([SPECIES[int(c)][1] for c in pdg]) / 1000.0
    charge = np.array([SPECIES[int(c)][2] for c in pdg], dtype=np.float64)

    nucleon = np.isin(pdg, (2112, 2212))
    spectator = nucleon & (rng.random(n) < SPECTATOR_SHARE)
    energy = _log_uniform(rng, *MESON_GEV, n)
    for code, (low, high) in PRODUCED_GEV.items():
        sel = pdg == code
        energy[sel] = _log_uniform(rng, low, high, sel.sum())
    energy[nucleon] = _log_uniform(rng, *FRAGMENT_GEV, nucleon.sum())
    energy[spectator] = rng.normal(BEAM_GEV_PER_NUCLEON, SPECTATOR_SIGMA_GEV, spectator.sum())
    energy = np.maximum(energy, mass_gev + 1.0)

    theta_scale = np.where(spectator, SPECTATOR_THETA_RAD, PRODUCED_THETA_RAD)
    theta_scale = np.where(rng.random(n) < WIDE_SHARE, WIDE_THETA_RAD, theta_scale)
    theta = rng.rayleigh(theta_scale)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    p = np.sqrt(energy**2 - mass_gev**2)
    px, py, pz = p * np.sin(theta) * np.cos(phi), p * np.sin(theta) * np.sin(phi), p * np.cos(theta)

    vertex = rng.normal(0.0, PRIMARY_VERTEX_SIGMA_M, size=(n, 3))
    secondary = ~spectator & (rng.random(n) < SECONDARY_SHARE)
    vertex[secondary, 0:2] = rng.normal(0.0, SECONDARY_XY_SIGMA_M, size=(secondary.sum(), 2))
    vertex[secondary, 2] = rng.uniform(*SECONDARY_Z_M, secondary.sum())

    features = np.empty((n, N_FEATURES), dtype=np.float64)
    features[:, INDEX["energy"]] = energy
    features[:, [INDEX["vx"], INDEX["vy"], INDEX["vz"]]] = vertex
    features[:, INDEX["px"]], features[:, INDEX["py"]], features[:, INDEX["pz"]] = px, py, pz
    features[:, INDEX["mass"]] = mass_gev * 1000.0
    features[:, INDEX["charge"]] = charge
    return features.astype(np.float32), pdg


def _shower_components(features, pdg, rng):
    """Gaussian components of every shower: centres (n, C, 2) cm, widths (n, C) cm, and deposited
    energies (n, C) GeV. Unused components carry zero energy."""
    n = len(features)
    energy = features[:, INDEX["energy"]].astype(np.float64)
    x, y = impact_point_cm(features)
    em = np.isin(pdg, EM_PDG)

    centres = np.empty((n, _N_COMPONENTS, 2))
    centres[:] = np.stack([x, y], axis=1)[:, None, :]
    widths = np.empty((n, _N_COMPONENTS))
    shares = np.zeros((n, _N_COMPONENTS))

    # Hadronic: every quantity fluctuates from one simulation to the next.
    fraction = rng.beta(*HAD_FRACTION_BETA, n)
    start = rng.exponential(1.0, n)  # first interaction depth, in interaction lengths
    fraction *= np.clip(1.0 - np.exp(-(ZN_LENGTH_LAMBDA - start) / LEAKAGE_LAMBDA), 0.0, 1.0)
    widths[:, 0] = rng.uniform(*HAD_CORE_CM, n)
    widths[:, 1] = rng.uniform(*HAD_HALO_CM, n)
    halo = rng.uniform(*HAD_HALO_SHARE, n)
    n_sub = np.minimum(rng.poisson(SUB_SHOWER_MEAN, n), SUB_SHOWER_MAX)
    sub_total = np.where(n_sub > 0, rng.uniform(*SUB_SHOWER_SHARE, n), 0.0)
    sub_used = np.arange(SUB_SHOWER_MAX)[None, :] < n_sub[:, None]
    sub_weights = rng.exponential(1.0, (n, SUB_SHOWER_MAX)) * sub_used  # Dirichlet(1) split
    sub_weights /= np.maximum(sub_weights.sum(axis=1, keepdims=True), 1e-12)
    centres[:, 2:, :] += rng.normal(0.0, SUB_SHOWER_OFFSET_CM, (n, SUB_SHOWER_MAX, 2))
    widths[:, 2:] = SUB_SHOWER_CM
    shares[:, 0] = (1 - halo) * (1 - sub_total)
    shares[:, 1] = halo * (1 - sub_total)
    shares[:, 2:] = sub_total[:, None] * sub_weights

    # Electromagnetic: narrow and nearly identical every time.
    em_fraction = np.clip(rng.normal(*EM_FRACTION, n), 0.0, 1.0)
    fraction = np.where(em, em_fraction, fraction)
    widths[em, 0], widths[em, 1] = EM_CORE_CM, EM_HALO_CM
    shares[em] = 0.0
    shares[em, 0], shares[em, 1] = 1 - EM_HALO_SHARE, EM_HALO_SHARE
    centres[em, 2:, :] = centres[em, :1, :]
    return centres, widths, shares * (energy * fraction)[:, None]


def simulate(features: np.ndarray, pdg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One independent simulation of each particle: photon counts (n, 44, 44) float32."""
    features = np.asarray(features, dtype=np.float32)
    pdg = np.asarray(pdg)
    centres, widths, deposits = _shower_components(features, pdg, rng)
    x_edges, y_edges = geometry.pixel_edges_cm()
    # Fraction of each Gaussian component inside each fibre column and row (separable Gaussians);
    # whatever falls outside the face is lost, which is what empties the misses.
    cdf_x = ndtr((x_edges[None, None, :] - centres[..., 0:1]) / widths[..., None])
    cdf_y = ndtr((y_edges[None, None, :] - centres[..., 1:2]) / widths[..., None])
    in_col = cdf_x[..., 1:] - cdf_x[..., :-1]  # (n, C, 44)
    in_row = cdf_y[..., :-1] - cdf_y[..., 1:]  # rows run from top (high y) to bottom
    deposit = np.einsum("nc,nci,ncj->nij", deposits, in_row, in_col)
    return rng.poisson(np.maximum(deposit, 0.0) * PHOTONS_PER_GEV).astype(np.float32)


@dataclass(frozen=True)
class Chunk:
    """A block of simulated entries; repeated simulations of one particle share particle_id."""

    features: np.ndarray  # (m, 9) float32
    pdg: np.ndarray  # (m,) int32
    particle_id: np.ndarray  # (m,) int64
    response: np.ndarray  # (m, 44, 44) float32

    def parts(self) -> dict[str, np.ndarray]:
        """The chunk as the parts `rootio.write_dataset` takes (features, pdg, particle_id, response)."""
        from . import rootio

        return {rootio.FEATURES: self.features, rootio.PDG: self.pdg, rootio.PARTICLE_ID: self.particle_id,
                rootio.RESPONSE: self.response}


def generate(n_particles: int, repeats: int, seed: int, first_id: int = 0) -> Iterator[Chunk]:
    """Sample particles and simulate each `repeats` times, CHUNK_PARTICLES particles at a time.

    Entries of one particle are consecutive. Each chunk draws from its own stream derived from
    (seed, chunk index), so the output depends on the seed alone.
    """
    if n_particles < 1 or repeats < 1:
        raise ConfigError(f"expected at least 1 particle and 1 repeat; found {n_particles} and {repeats}")
    for index, start in enumerate(range(0, n_particles, CHUNK_PARTICLES)):
        rng = np.random.default_rng([seed, index])
        m = min(CHUNK_PARTICLES, n_particles - start)
        features, pdg = sample_particles(m, rng)
        features, pdg = np.repeat(features, repeats, axis=0), np.repeat(pdg, repeats)
        ids = np.repeat(np.arange(first_id + start, first_id + start + m, dtype=np.int64), repeats)
        yield Chunk(features, pdg, ids, simulate(features, pdg, rng))
