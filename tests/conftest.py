"""Fixtures shared by every test: a tiny reference dataset, an untrained tiny checkpoint and a
served one. The tests mirror the packages (docs/architecture.md); `make test` runs all but the
`slow` tier, `make test-all` everything."""

import numpy as np
import pytest
import torch

from service.process import ServerProcess as Server
from zdc_sim import checkpoint, reference, rootio
from zdc_sim.features import Domain, Standardizer
from zdc_sim.models import SIZES, Generator, ModelConfig


def make_parts(n_particles=40, repeats=4, seed=3, reaching="zn"):
    """A tiny reference dataset of particles that reach the ZN (by default) as one {features, pdg,
    particle_id, response_zn, response_zp} chunk."""
    chunks = [c.parts() for c in reference.generate(n_particles, repeats, seed, reaching=reaching)]
    return {part: np.concatenate([c[part] for c in chunks]) for part in rootio.PARTS}


@pytest.fixture(scope="session")
def tiny_parts():
    return make_parts()


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory, tiny_parts):
    path = tmp_path_factory.mktemp("data") / "tiny.root"
    rootio.write_dataset(path, [tiny_parts], provenance={"seed": 3})
    return path


def save_tiny_model(path, detector: str = "zn", **model_options):
    """An untrained tiny generator of `detector` (with `model_options` over the tiny size's
    structure) saved as a checkpoint, fitted to the particles that reach it (A-side frame, as
    training does); its feature ranges are those of 20,000 reference particles, as training would
    record them."""
    from zdc_sim import geometry

    torch.manual_seed(0)
    feats, _ = reference.sample_particles(2000, np.random.default_rng(0))
    feats = geometry.to_a_side(feats[geometry.reaches(feats, detector)])[:256]
    config = ModelConfig(**{**SIZES["tiny"].to_dict(), "detector": detector, **model_options})
    generator = Generator(config)
    standardizer = Standardizer.fit(feats)
    generator.conditioner.fit(standardizer, feats)
    generator.set_total_scale(8.0)
    ranges = geometry.to_a_side(reference.sample_particles(20_000, np.random.default_rng(1))[0])
    checkpoint.save(path, checkpoint.prefixed("generator", generator.state_dict()),
                    {"model": config.to_dict(), "standardizer": standardizer.to_dict(),
                     "feature_ranges": Domain.fit(ranges).to_dict()})
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """An untrained tiny ZN generator saved as a checkpoint: enough for service and export tests."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", "zn")


@pytest.fixture(scope="session")
def tiny_zp_checkpoint(tmp_path_factory):
    """The same for the ZP."""
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny_zp.safetensors", "zp")


@pytest.fixture(scope="session")
def server(tiny_checkpoint, tiny_zp_checkpoint):
    """`zdc-sim serve` in a subprocess with the tiny ZN and ZP models (request bodies limited to 16
    MiB, idle connections closed after 1 s); yields it running."""
    served = Server("--checkpoint", str(tiny_checkpoint), "--zp-checkpoint", str(tiny_zp_checkpoint), "--device", "cpu",
                    env={"ZDC_SIM_MAX_REQUEST_BYTES": str(16 << 20), "ZDC_SIM_KEEP_ALIVE_S": "1"})
    with served.running():
        yield served
    assert served.returncode == 0  # SIGTERM after a clean drain: a stop asked for and done
