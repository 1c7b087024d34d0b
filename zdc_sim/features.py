"""The 9 particle features that condition the simulation: names, units, order, validation and
standardisation. Everything that takes particles from a user goes through `validate`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DomainError, FeatureError

NAMES = ("energy", "vx", "vy", "vz", "px", "py", "pz", "mass", "charge")
UNITS = ("GeV", "m", "m", "m", "GeV", "GeV", "GeV", "MeV", "e")
N_FEATURES = len(NAMES)
INDEX = {name: i for i, name in enumerate(NAMES)}

# float32 rounding of E and p at TeV energies is ~1e-4 GeV; allow a little more than that.
ENERGY_BELOW_MOMENTUM_TOLERANCE = 1e-5  # relative to |p|
CHARGE_TOLERANCE = 1e-4  # |charge - round(charge)|


def momentum(features: np.ndarray) -> np.ndarray:
    """|p| in GeV for each row."""
    f = np.asarray(features, dtype=np.float64)
    return np.sqrt(f[:, INDEX["px"]] ** 2 + f[:, INDEX["py"]] ** 2 + f[:, INDEX["pz"]] ** 2)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def validate(features, *, source: str = "features") -> np.ndarray:
    """Check an (N, 9) array of particles and return it as float32.

    Raises FeatureError naming the first offending row and feature, and the rule it broke.
    """
    try:
        arr = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FeatureError(f"{source}: expected a numeric (N, {N_FEATURES}) array; {exc}") from None
    if arr.ndim != 2 or arr.shape[1] != N_FEATURES:
        raise FeatureError(
            f"{source}: expected shape (N, {N_FEATURES}) with columns {', '.join(NAMES)}; "
            f"found shape {arr.shape}"
        )
    finite = np.isfinite(arr)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise FeatureError(
            f"{source}: row {row}, feature '{NAMES[col]}' is {arr[row, col]}; expected a finite number"
        )
    checks = (
        ("energy", arr[:, 0] <= 0, "expected energy > 0 GeV"),
        ("mass", arr[:, 7] < 0, "expected mass >= 0 MeV"),
        (
            "charge",
            np.abs(arr[:, 8] - np.round(arr[:, 8])) > CHARGE_TOLERANCE,
            "expected an integral charge in units of e",
        ),
    )
    for name, bad, rule in checks:
        if bad.any():
            row = _first_bad(bad)
            raise FeatureError(f"{source}: row {row}, feature '{name}' is {arr[row, INDEX[name]]}; {rule}")
    p = momentum(arr)
    below = arr[:, 0] < p * (1.0 - ENERGY_BELOW_MOMENTUM_TOLERANCE)
    if below.any():
        row = _first_bad(below)
        raise FeatureError(
            f"{source}: row {row}, feature 'energy' is {arr[row, 0]} GeV but |p| is {p[row]} GeV; "
            "expected energy >= |p|"
        )
    return arr.astype(np.float32)


@dataclass(frozen=True)
class Standardizer:
    """Per-feature mean and standard deviation, fitted on the training split only and stored with
    every model so inference applies exactly the transformation training saw."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, features: np.ndarray) -> "Standardizer":
        arr = np.asarray(features, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != N_FEATURES or len(arr) == 0:
            raise FeatureError(f"cannot fit standardisation: expected a non-empty (N, 9) array, found {arr.shape}")
        std = arr.std(axis=0)
        # A constant feature (say, charge in a neutron-only set) carries no information: leave it
        # centred but unscaled rather than divide by ~0.
        std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(arr.mean(axis=0))), std, 1.0)
        return cls(tuple(float(m) for m in arr.mean(axis=0)), tuple(float(s) for s in std))

    def transform(self, features: np.ndarray) -> np.ndarray:
        return ((np.asarray(features, np.float64) - self.mean) / self.std).astype(np.float32)

    def inverse(self, standardized: np.ndarray) -> np.ndarray:
        return (np.asarray(standardized, np.float64) * self.std + self.mean).astype(np.float32)

    def to_dict(self) -> dict:
        return {"names": list(NAMES), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> "Standardizer":
        if list(data.get("names", [])) != list(NAMES):
            raise FeatureError(f"standardisation was fitted on features {data.get('names')}; expected {list(NAMES)}")
        mean, std = data["mean"], data["std"]
        if len(mean) != N_FEATURES or len(std) != N_FEATURES:
            raise FeatureError(f"standardisation needs {N_FEATURES} means and stds; found {len(mean)} and {len(std)}")
        return cls(tuple(map(float, mean)), tuple(map(float, std)))


DOMAIN_TOLERANCE = 0.1  # a row may exceed a trained range by this share of the range's width


@dataclass(frozen=True)
class Domain:
    """The feature ranges a model was trained on, stored in its checkpoint. A row is inside when
    every feature lies within its range widened by DOMAIN_TOLERANCE of the range's width on each
    side (charge -1..1 admits -1.2..1.2; a 1e30 GeV neutron is far outside), but never across zero:
    a feature trained with one sign only (pz of particles flying to one side) keeps that sign."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def fit(cls, features: np.ndarray) -> "Domain":
        arr = np.asarray(features, dtype=np.float64)
        return cls(tuple(map(float, arr.min(0))), tuple(map(float, arr.max(0))))

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        low, high = np.asarray(self.low), np.asarray(self.high)
        margin = DOMAIN_TOLERANCE * (high - low)
        return (np.where(low >= 0, np.maximum(low - margin, 0.0), low - margin),
                np.where(high <= 0, np.minimum(high + margin, 0.0), high + margin))

    def outside(self, features: np.ndarray) -> np.ndarray:
        """(N,) True for rows with any feature outside the widened ranges."""
        low, high = self.bounds()
        arr = np.asarray(features, dtype=np.float64)
        return ((arr < low) | (arr > high)).any(1)

    def check(self, features: np.ndarray, *, source: str = "features", only: np.ndarray | None = None) -> None:
        """Raise DomainError naming the first row outside, its feature, value and trained range;
        `only` (N,) bool: the rows to check (the others pass)."""
        outside = self.outside(features) if only is None else self.outside(features) & only
        if not outside.any():
            return
        row = int(np.argmax(outside))
        low, high = self.bounds()
        value = np.asarray(features, dtype=np.float64)[row]
        col = int(np.argmax((value < low) | (value > high)))
        raise DomainError(
            f"{source}: row {row}, feature '{NAMES[col]}' is {value[col]:.6g} {UNITS[col]}, outside the range the model "
            f"was trained on ({self.low[col]:.6g} to {self.high[col]:.6g} {UNITS[col]}, {DOMAIN_TOLERANCE:.0%} "
            f"tolerance, never across zero; {int(outside.sum())} of {len(outside)} rows outside); expected a particle within it, or ask "
            f"for an extrapolation explicitly (extrapolate=True)")

    def to_dict(self) -> dict:
        return {"names": list(NAMES), "low": list(self.low), "high": list(self.high), "tolerance": DOMAIN_TOLERANCE}

    @classmethod
    def from_dict(cls, data: dict) -> "Domain":
        if list(data.get("names", [])) != list(NAMES):
            raise FeatureError(f"feature ranges are for features {data.get('names')}; expected {list(NAMES)}")
        return cls(tuple(map(float, data["low"])), tuple(map(float, data["high"])))
