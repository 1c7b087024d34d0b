import numpy as np
import pytest

from zdc_sim import io, reference


def make_parts(n_particles=40, repeats=4, seed=3):
    """A tiny reference dataset as one {features, pdg, particle_id, response} chunk."""
    chunks = list(reference.generate(n_particles, repeats, seed))
    return {
        io.FEATURES: np.concatenate([c.features for c in chunks]),
        io.PDG: np.concatenate([c.pdg for c in chunks]),
        io.PARTICLE_ID: np.concatenate([c.particle_id for c in chunks]),
        io.RESPONSE: np.concatenate([c.response for c in chunks]),
    }


@pytest.fixture(scope="session")
def tiny_parts():
    return make_parts()


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory, tiny_parts):
    path = tmp_path_factory.mktemp("data") / "tiny.root"
    io.write_dataset(path, [tiny_parts], provenance={"seed": 3})
    return path
