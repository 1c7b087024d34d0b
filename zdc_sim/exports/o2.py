"""The files ALICE O2's ZDC fast simulation loads as they are (docs/o2.md): per detector an ONNX
model `<det>_model.onnx` and its scales file `<det>_scales.txt`, and a classifier
`classifier.onnx` with `classifier_scales.txt`.

    export_o2(Simulator.load("zn"), "o2_models")
    # -> zn_model.onnx, zn_scales.txt, classifier.onnx, classifier_scales.txt

O2's calling convention, which the graphs absorb so that O2 changes nothing:

- inputs bound by position: input 0 `noise` float32 [batch, 10], N(0, 1) drawn by O2 per particle;
  input 1 `features` float32 [batch, 9], O2's `(raw - mean) / scale` with the scales file's values
  and raw in O2's units: energy GeV, vertex **cm**, momentum GeV, mass MeV, charge **|e|/3**.
  The batch axis is dynamic; O2 sets it to 1 (one particle per Run).
- output 0 `log_photons` float32 [batch, pixels]: log(1 + photons), flat, pixel (x, y) at
  `columns * y + x` (ZN 44 x 44 = 1,936, ZP 56 x 30 = 1,680), what O2 reads with expm1.
- inside: the scaling undone with the scales file's own (float32) values, O2's units turned into
  ours (vertex / 100, charge / 3), then zdc_sim.exports.onnx's graph: C side mirrored, our
  standardisation, the generator, an empty image for a particle that does not reach the detector.
- the scales file holds our standardisation in O2's units, so the values O2 feeds are exactly our
  standardised features (and the graph's round trip changes them by float rounding only).

Photon statistics: O2 supplies 10 noise values and no photon normals, while our generator draws one
per fibre. PHOTON_STATISTICS names the options (docs/o2.md has their measured fidelity):
'hashed' (the default) derives the fibres' normals inside the graph from the 10 noise values,
'mean' gives the mean response (no photon statistics), 'random' draws them with ONNX's
RandomNormalLike (ONNX Runtime seeds it per process from the clock: not reproducible).

Integral photon counts are written as log1p(k) x (1 + 2^-22) rounded to float32, so that O2's
per-pixel truncation `(int) expm1(pixel)` (its hits) gives back k: the nearest float32 of log1p(k)
loses a photon in 45 % of the pixels that way. The excess is below 3.5e-6 of a pixel's count
(k <= 2e5), 0 for an empty pixel.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import atomic, checkpoint, features, geometry
from ..errors import ConfigError, ZdcError
from .onnx import OPSET, _Graph, _reaches

NOISE, SCALED = "noise", "features"  # O2 binds by position: noise first, scaled features second
LOG_PHOTONS = "log_photons"  # output 0 of a model
REACHES = "reaches"  # output 0 of the classifier: 1.0 or 0.0
NOISE_DIM = 10  # O2's normal_distribution(0, 1, 10) (Detector.cxx)
BATCH = "batch"  # the dynamic batch axis; O2 sets every negative dimension to 1

O2_UNITS = ("GeV", "cm", "cm", "cm", "GeV", "GeV", "GeV", "MeV", "|e|/3")
# Our units (zdc_sim.features.UNITS) -> O2's: vertex m -> cm, charge e -> |e|/3; the rest unchanged.
TO_O2 = np.array([1.0, 100.0, 100.0, 100.0, 1.0, 1.0, 1.0, 1.0, 3.0])

PHOTON_STATISTICS = ("hashed", "mean", "random")
DEFAULT_PHOTON_STATISTICS = "hashed"
HASH_SEED = 2023  # of the fixed projection of the 10 noise values onto the fibres' uniforms
HASH_SCALE = 1000.0  # its weights' scale: frac(W z) uniform, independent of the latent (hashed_normals)
LOG_NUDGE = 1.0 + 2.0**-22  # see the module's docstring: expm1 of the output never falls below k

MEANS_MARKER, SCALES_MARKER = "#means", "#scales"
CLASSIFIER = "classifier"


# --- units and scales ------------------------------------------------------------------------------

def to_o2_units(particle_features) -> np.ndarray:
    """(N, 9) features in our units (zdc_sim.features) -> O2's (O2_UNITS), float64."""
    return np.asarray(particle_features, np.float64) * TO_O2


def from_o2_units(o2_features) -> np.ndarray:
    """(N, 9) features in O2's units -> ours, float64."""
    return np.asarray(o2_features, np.float64) / TO_O2


def o2_scales(standardizer: features.Standardizer) -> tuple[np.ndarray, np.ndarray]:
    """Our standardisation in O2's units as the float32 values O2 parses from the scales file:
    O2's scaled features are then our standardised ones."""
    mean = (np.asarray(standardizer.mean, np.float64) * TO_O2).astype(np.float32)
    scale = (np.asarray(standardizer.std, np.float64) * TO_O2).astype(np.float32)
    return mean, scale


def scales_text(mean, scale) -> str:
    """O2's scales file: a line exactly '#means', one value per line, a blank line, a line exactly
    '#scales', one value per line; '\\n' newlines, nothing trailing on a line. Each value with 9
    significant digits, which `std::stof` reads back to the same float32."""
    def block(marker, values):
        return [marker] + [format(float(np.float32(v)), ".9g") for v in values]

    if len(mean) != features.N_FEATURES or len(scale) != features.N_FEATURES:
        raise ConfigError(f"a scales file needs {features.N_FEATURES} means and scales; found {len(mean)} and "
                          f"{len(scale)}")
    if not np.all(np.isfinite(scale)) or np.any(np.asarray(scale) == 0):
        raise ConfigError(f"every scale must be finite and non-zero (O2 divides by it unguarded); found {list(scale)}")
    return "\n".join(block(MEANS_MARKER, mean) + [""] + block(SCALES_MARKER, scale)) + "\n"


def parse_scales(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(means, scales) float32 as O2's loadScales reads them (parse_block twice on one stream: skip
    to the line equal to the marker, then `std::stof` each line up to a blank line or the end)."""
    lines = iter(text.split("\n") if not text.endswith("\n") else text[:-1].split("\n"))

    def block(marker):
        found = any(line == marker for line in lines)
        values = []
        for line in lines:
            if not line:
                break
            if found:
                values.append(np.float32(float(line)))
        return np.array(values, np.float32)

    means, scales = block(MEANS_MARKER), block(SCALES_MARKER)
    if not len(means) or len(means) != len(scales):
        raise ConfigError(f"not an O2 scales file: found {len(means)} means and {len(scales)} scales")
    return means, scales


def o2_scale_features(o2_features, mean, scale) -> np.ndarray:
    """(N, 9) float32 `(raw - mean) / scale` in float arithmetic, as O2's StandardScaler does."""
    raw = np.asarray(o2_features, np.float64).astype(np.float32)
    return (raw - np.asarray(mean, np.float32)) / np.asarray(scale, np.float32)


def o2_channels(log_photons, detector) -> np.ndarray:
    """(N, 5) int64 channel sums of flat model outputs (N, pixels) as O2's calculateChannels forms
    them: expm1 per pixel in float, summed in float in flat-index order, one lround per channel;
    pixel (i, j) (row, column) at j + i * columns, towers 1-4 on even (i + j), channel 5 on odd
    (zdc_sim.geometry's masks: O2's quadrants for the ZN, four strips along x for the ZP)."""
    det = geometry.detector(detector)
    flat = np.asarray(log_photons, np.float32).reshape(-1, det.n_pixels)
    masks = det.masks.reshape(geometry.N_CHANNELS, -1)
    sums = np.empty((len(flat), geometry.N_CHANNELS), np.float32)
    for start in range(0, len(flat), 1024):
        photons = np.expm1(flat[start : start + 1024])
        for c in range(geometry.N_CHANNELS):  # np.cumsum adds one value after the other, as the C++ loop
            sums[start : start + 1024, c] = np.cumsum(photons[:, masks[c]], axis=1, dtype=np.float32)[:, -1]
    wide = sums.astype(np.float64)
    return np.where(wide >= 0, np.floor(wide + 0.5), np.ceil(wide - 0.5)).astype(np.int64)  # lround


# --- photon statistics from 10 noise values ---------------------------------------------------------

def hash_projection(n_pixels: int) -> np.ndarray:
    """(10, n_pixels) float64: the fixed weights of the 'hashed' photon statistics."""
    if n_pixels % 2:
        raise ConfigError(f"hashed photon statistics pair the fibres; found an odd count {n_pixels}")
    return np.random.default_rng(HASH_SEED).standard_normal((NOISE_DIM, n_pixels)) * HASH_SCALE


def _box_muller_numpy(u: np.ndarray) -> np.ndarray:
    """Uniforms (N, 2m) in [0, 1) -> standard normals (N, 2m): pairs (u_k, u_(m+k)) by Box and Muller."""
    half = u.shape[1] // 2
    radius, angle = np.sqrt(-2.0 * np.log(1.0 - u[:, :half])), (2.0 * np.pi) * u[:, half:]  # 1 - u in (0, 1]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], 1)


def _box_muller_torch(u: torch.Tensor) -> torch.Tensor:
    half = u.shape[1] // 2
    radius, angle = torch.sqrt(-2.0 * torch.log(1.0 - u[:, :half])), (2.0 * np.pi) * u[:, half:]
    return torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], 1)


def hashed_normals(noise, n_pixels: int) -> np.ndarray:
    """(N, n_pixels) float32 standard normals derived from O2's (N, 10) noise values, as the 'hashed'
    graph derives them: uniforms u = frac(W z) with W = hash_projection (float64), paired by Box and
    Muller. With weights of scale 1000, each u is uniform and independent of any smooth function of
    z (the latent) and of the other fibres' u to far below float precision (the characteristic
    function of frac(a . z) at integer k is exp(-2 pi^2 k^2 |a|^2)), while 10 noise values cannot
    make 1,936 fully independent ones: dependence shows only in products of many fibres."""
    z = np.asarray(noise, np.float32).astype(np.float64)
    t = z @ hash_projection(n_pixels)
    return _box_muller_numpy(t - np.floor(t)).astype(np.float32)


# --- the graphs -------------------------------------------------------------------------------------

class _O2Graph(nn.Module):
    """(noise (N, 10), O2-scaled features (N, 9)) -> log1p(photons) (N, pixels), flat."""

    def __init__(self, generator, standardizer: features.Standardizer, mean, scale, photon_statistics: str):
        super().__init__()
        config = generator.config
        if photon_statistics == "mean" and config.photon_noise:  # the generator's mean counts
            generator.config = dataclasses.replace(config, photon_noise=False)
        self.statistics = photon_statistics if config.photon_noise else "none"
        self.graph = _Graph(generator, standardizer)
        self.register_buffer("o2_mean", torch.tensor(np.asarray(mean, np.float32), dtype=torch.float64))
        self.register_buffer("o2_scale", torch.tensor(np.asarray(scale, np.float32), dtype=torch.float64))
        self.register_buffer("to_ours", torch.tensor(1.0 / TO_O2, dtype=torch.float64))
        n_pixels = config.geometry.n_pixels
        if self.statistics == "hashed":
            self.register_buffer("projection", torch.from_numpy(hash_projection(n_pixels)))
        elif self.statistics == "random":
            self.register_buffer("pixel_row", torch.zeros(1, n_pixels))

    def forward(self, noise: torch.Tensor, scaled: torch.Tensor) -> torch.Tensor:
        raw = (scaled.double() * self.o2_scale + self.o2_mean) * self.to_ours
        photon = None
        if self.statistics == "hashed":
            t = noise.double() @ self.projection
            photon = _box_muller_torch(t - torch.floor(t)).float()
        elif self.statistics == "random":
            photon = torch.randn_like(noise[:, :1].float() * self.pixel_row)  # RandomNormalLike, (N, pixels)
        counts, _ = self.graph(raw, noise.float(), photon)
        return (torch.log1p(counts.flatten(1).double()) * LOG_NUDGE).float()


class _Classifier(nn.Module):
    """O2-scaled features (N, 9) -> (N, 1): 1.0 where the particle reaches the ZN or the ZP
    (geometry.reaches with each detector's margin), else 0.0."""

    def __init__(self, mean, scale):
        super().__init__()
        self.register_buffer("o2_mean", torch.tensor(np.asarray(mean, np.float32), dtype=torch.float64))
        self.register_buffer("o2_scale", torch.tensor(np.asarray(scale, np.float32), dtype=torch.float64))
        self.register_buffer("to_ours", torch.tensor(1.0 / TO_O2, dtype=torch.float64))
        flip = torch.zeros(features.N_FEATURES, dtype=torch.float64)
        flip[[features.INDEX["vz"], features.INDEX["pz"]]] = 2.0
        self.register_buffer("flip", flip)

    def forward(self, scaled: torch.Tensor) -> torch.Tensor:
        raw = (scaled.double() * self.o2_scale + self.o2_mean) * self.to_ours
        c_side = (raw[:, features.INDEX["pz"]] <= 0).double()
        mirrored = raw * (1.0 - c_side[:, None] * self.flip)
        return torch.maximum(_reaches(geometry.ZN, raw, mirrored), _reaches(geometry.ZP, raw, mirrored))[:, None]


def _example_scaled(mean, scale, n: int = 2) -> torch.Tensor:
    o2 = np.zeros((n, features.N_FEATURES))
    o2[:, features.INDEX["energy"]] = o2[:, features.INDEX["pz"]] = 100.0
    return torch.from_numpy(o2_scale_features(o2, mean, scale))


def _to_onnx(module: nn.Module, example: tuple, widths: dict[str, int], output: str, props: dict) -> bytes:
    """The module as ONNX with a dynamic batch axis; `widths`: each input's and the output's fixed
    second dimension, written into the graph (the exporter leaves the output's symbolic)."""
    import onnx

    inputs = [name for name in widths if name != output]
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, as exports/onnx.py
        torch.onnx.export(module.eval(), example, buffer, input_names=inputs, output_names=[output],
                          dynamic_axes={name: {0: BATCH} for name in widths}, opset_version=OPSET, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.shape.dim[1].dim_value = widths[value.name]
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def o2_model_bytes(generator, standardizer: features.Standardizer, metadata: dict | None = None,
                   photon_statistics: str = DEFAULT_PHOTON_STATISTICS) -> bytes:
    """A generator as the ONNX model O2 runs (see the module's docstring), scaled with
    `o2_scales(standardizer)`. The generator is not changed (a contiguous copy is exported)."""
    if photon_statistics not in PHOTON_STATISTICS:
        raise ConfigError(f"photon_statistics must be one of {', '.join(PHOTON_STATISTICS)}; "
                          f"found {photon_statistics!r}")
    config = generator.config
    if config.latent_dim != NOISE_DIM:
        raise ZdcError(f"O2 feeds a model {NOISE_DIM} noise values (its latent); this {config.detector.upper()} model "
                       f"takes a latent of {config.latent_dim}: expected latent_dim {NOISE_DIM}")
    metadata = metadata or {}
    mean, scale = o2_scales(standardizer)
    copied = copy.deepcopy(generator).cpu().to(memory_format=torch.contiguous_format)
    graph = _O2Graph(copied, standardizer, mean, scale, photon_statistics)
    det = config.geometry
    props = {"version": checkpoint.model_version(metadata), "checksum": metadata.get("checksum", ""),
             "detector": config.detector, "photon_statistics": graph.statistics,
             "inputs": f"{NOISE}: {NOISE_DIM} N(0, 1) values; {SCALED}: (raw - mean) / scale, the scales file's",
             "features": ",".join(features.NAMES), "units": ",".join(O2_UNITS),
             "output": f"log(1 + photons), flat, pixel (x, y) at {det.shape[1]} * y + x "
                       f"({det.shape[1]} x {det.shape[0]})",
             "pixels": str(det.n_pixels), "opset": str(OPSET),
             "feature_ranges": json.dumps(metadata.get("feature_ranges"))}
    example = (torch.zeros(2, NOISE_DIM), _example_scaled(mean, scale))
    widths = {NOISE: NOISE_DIM, SCALED: features.N_FEATURES, LOG_PHOTONS: det.n_pixels}
    return _to_onnx(graph, example, widths, LOG_PHOTONS, props)


def classifier_bytes(mean=None, scale=None) -> bytes:
    """The classifier O2 runs first (scaled features in, output 0's first float rounded, non-zero =
    'reaches the ZDC'): 1.0 where the particle reaches the ZN or the ZP, else 0.0. By default
    scaled with means 0 and scales 1, so it sees O2's raw features."""
    mean = np.zeros(features.N_FEATURES, np.float32) if mean is None else mean
    scale = np.ones(features.N_FEATURES, np.float32) if scale is None else scale
    margins = {d.name: d.reach_margin_cm for d in (geometry.ZN, geometry.ZP)}
    props = {"model": CLASSIFIER, "inputs": f"{SCALED}: (raw - mean) / scale, the scales file's",
             "features": ",".join(features.NAMES), "units": ",".join(O2_UNITS),
             "output": "1.0: reaches the ZN or the ZP (straight line, separator dipole bend, face and margin), "
                       "0.0: neither",
             "reach_margin_cm": json.dumps(margins), "opset": str(OPSET)}
    widths = {SCALED: features.N_FEATURES, REACHES: 1}
    return _to_onnx(_Classifier(mean, scale), (_example_scaled(mean, scale),), widths, REACHES, props)


# --- files ------------------------------------------------------------------------------------------

def _write(path: Path, data: bytes) -> Path:
    with atomic.atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_o2_export(simulator, out_dir, photon_statistics: str = DEFAULT_PHOTON_STATISTICS) -> list[Path]:
    """out_dir/<det>_model.onnx and out_dir/<det>_scales.txt of a Simulator's model (the folder is
    created if missing): O2's ZDCFastSimModelPath{Neutron,Proton} and ZDCFastSimModelScales{...}."""
    det = simulator.detector.name
    data = o2_model_bytes(simulator.generator, simulator.standardizer, simulator.metadata, photon_statistics)
    model = _write(Path(out_dir) / f"{det}_model.onnx", data)
    scales = _write(Path(out_dir) / f"{det}_scales.txt", scales_text(*o2_scales(simulator.standardizer)).encode())
    return [model, scales]


def write_o2_classifier(out_dir) -> list[Path]:
    """out_dir/classifier.onnx and out_dir/classifier_scales.txt (means 0, scales 1): O2's
    ZDCFastSimClassifierPath and ZDCFastSimClassifierScales."""
    mean, scale = np.zeros(features.N_FEATURES, np.float32), np.ones(features.N_FEATURES, np.float32)
    model = _write(Path(out_dir) / f"{CLASSIFIER}.onnx", classifier_bytes(mean, scale))
    scales = _write(Path(out_dir) / f"{CLASSIFIER}_scales.txt", scales_text(mean, scale).encode())
    return [model, scales]


def export_o2(simulator, out_dir, detector: str | None = None, classifier: bool = True,
              photon_statistics: str = DEFAULT_PHOTON_STATISTICS) -> list[Path]:
    """What `zdc-sim model export --format o2` writes: a Simulator's O2 files (write_o2_export) and,
    with `classifier`, the classifier's (write_o2_classifier); `detector`, when given, must be the
    model's (the command line loads the model: this layer sits below the Simulator)."""
    if detector is not None and geometry.detector(detector) != simulator.detector:
        raise ZdcError(f"detector {detector}: the model simulates the {simulator.detector.name.upper()}; expected a "
                       f"{geometry.detector(detector).name.upper()} model")
    paths = write_o2_export(simulator, out_dir, photon_statistics)
    if classifier:
        paths += write_o2_classifier(out_dir)
    return paths
