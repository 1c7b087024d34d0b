import numpy as np
import pytest

from zdc_sim import features as F
from zdc_sim.errors import DomainError, FeatureError

NEUTRON = [2510.0, 0.0, 0.0, 0.0, 0.01, -0.02, 2509.9, 939.565, 0.0]


def rows(*changes):
    arr = np.array([NEUTRON] * 3, dtype=np.float64)
    for row, name, value in changes:
        arr[row, F.INDEX[name]] = value
    return arr


def test_order_and_units():
    assert F.NAMES == ("energy", "vx", "vy", "vz", "px", "py", "pz", "mass", "charge")
    assert F.UNITS == ("GeV", "m", "m", "m", "GeV", "GeV", "GeV", "MeV", "e")


def test_valid_rows_come_back_as_float32():
    out = F.validate(rows())
    assert out.dtype == np.float32 and out.shape == (3, 9)
    np.testing.assert_allclose(out[0], NEUTRON, rtol=1e-6)


@pytest.mark.parametrize(
    "change, words",
    [
        ((1, "vx", np.nan), ["row 1", "'vx'", "finite"]),
        ((2, "pz", np.inf), ["row 2", "'pz'", "finite"]),
        ((0, "energy", 0.0), ["row 0", "'energy'", "energy > 0"]),
        ((1, "mass", -1.0), ["row 1", "'mass'", "mass >= 0"]),
        ((2, "charge", 0.5), ["row 2", "'charge'", "integral"]),
        ((1, "energy", 2000.0), ["row 1", "'energy'", "|p|", "energy >= |p|"]),
    ],
)
def test_errors_name_row_feature_and_rule(change, words):
    with pytest.raises(FeatureError) as err:
        F.validate(rows(change))
    for word in words:
        assert word in str(err.value)


def test_energy_equal_to_momentum_within_float32_rounding_is_accepted():
    photon = np.array([[300.0, 0, 0, 0, 0.03, 0.0, np.sqrt(300.0**2 - 0.03**2), 0.0, 0.0]], np.float32)
    F.validate(photon)


@pytest.mark.parametrize("bad", [np.zeros((3, 8)), np.zeros(9), [["a"] * 9]])
def test_wrong_shape_or_type_is_named(bad):
    with pytest.raises(FeatureError, match="expected"):
        F.validate(bad)


def test_standardizer_fits_and_round_trips(tiny_parts):
    feats = tiny_parts["features"]
    std = F.Standardizer.fit(feats)
    z = std.transform(feats)
    varying = np.array(std.std) != 1.0
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z[:, varying].std(axis=0), 1.0, rtol=1e-3)
    np.testing.assert_allclose(std.inverse(z), feats, rtol=1e-4, atol=1e-4)
    assert F.Standardizer.from_dict(std.to_dict()) == std


def test_constant_feature_is_not_divided_by_zero():
    std = F.Standardizer.fit(rows())
    assert np.isfinite(std.transform(rows())).all()
    assert std.std[F.INDEX["charge"]] == 1.0


def test_standardizer_rejects_other_feature_names():
    data = F.Standardizer.fit(rows()).to_dict()
    data["names"] = data["names"][::-1]
    with pytest.raises(FeatureError, match="fitted on features"):
        F.Standardizer.from_dict(data)


def test_the_domain_tolerance_never_crosses_zero():
    """pz trained on 5..2925 GeV: the 10 % tolerance widens the range to ~-287 GeV on its own, but
    a particle flying the other way (pz -200 GeV) is outside; energies keep their 10 % above."""
    trained = np.array([[5.0, -1e-3, -1e-3, 0, -0.5, -0.5, 5.0, 0, -1], [2925.0, 1e-3, 1e-3, 80, 0.5, 0.5, 2925.0, 940, 1]])
    domain = F.Domain.fit(trained)
    backwards = trained[:1].copy()
    backwards[0, F.INDEX["pz"]] = -200.0
    assert domain.outside(backwards).tolist() == [True]
    with pytest.raises(DomainError, match="'pz' is -200 GeV.*never across zero"):
        domain.check(backwards)
    edge = trained[:1].copy()
    edge[0, F.INDEX["pz"]] = 0.0  # down to zero, not beyond
    edge[0, F.INDEX["vx"]] = -1.1e-3  # both signs trained: widened on both sides as before
    assert domain.outside(edge).tolist() == [False]
    above = trained[1:].copy()
    above[0, F.INDEX["energy"]] = above[0, F.INDEX["pz"]] = 2925.0 + 0.09 * 2920.0
    assert domain.outside(above).tolist() == [False]
