"""Fixtures shared by every test: a tiny reference dataset, an untrained tiny checkpoint and a
served one. The tests mirror the packages (docs/architecture.md); `make test` runs all but the
`slow` tier, `make test-all` everything."""

import numpy as np
import pytest
import torch

from service.process import ServerProcess as Server
from zdc_sim import checkpoint, reference, rootio
from zdc_sim.features import Domain, Standardizer
from zdc_sim.models import SIZES, Generator


def make_parts(n_particles=40, repeats=4, seed=3):
    """A tiny reference dataset as one {features, pdg, particle_id, response} chunk."""
    chunks = [c.parts() for c in reference.generate(n_particles, repeats, seed)]
    return {part: np.concatenate([c[part] for c in chunks]) for part in rootio.PARTS}


@pytest.fixture(scope="session")
def tiny_parts():
    return make_parts()


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory, tiny_parts):
    path = tmp_path_factory.mktemp("data") / "tiny.root"
    rootio.write_dataset(path, [tiny_parts], provenance={"seed": 3})
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """An untrained tiny generator saved as a checkpoint: enough for service and export tests. Its
    feature ranges are those of 20,000 reference particles, as training would record them."""
    torch.manual_seed(0)
    feats, _ = reference.sample_particles(256, np.random.default_rng(0))
    generator = Generator(SIZES["tiny"])
    standardizer = Standardizer.fit(feats)
    generator.conditioner.fit(standardizer, feats)
    generator.set_total_scale(8.0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    checkpoint.save(path, checkpoint.prefixed("generator", generator.state_dict()),
                    {"model": SIZES["tiny"].to_dict(), "standardizer": standardizer.to_dict(),
                     "feature_ranges": Domain.fit(reference.sample_particles(20_000, np.random.default_rng(1))[0]).to_dict()})
    return path


@pytest.fixture(scope="session")
def server(tiny_checkpoint):
    """`zdc-sim serve` in a subprocess (request bodies limited to 16 MiB, idle connections closed
    after 1 s); yields it running."""
    served = Server("--checkpoint", str(tiny_checkpoint), "--device", "cpu",
                    env={"ZDC_SIM_MAX_REQUEST_BYTES": str(16 << 20), "ZDC_SIM_KEEP_ALIVE_S": "1"})
    with served.running():
        yield served
    assert served.returncode == 0  # SIGTERM after a clean drain: a stop asked for and done
