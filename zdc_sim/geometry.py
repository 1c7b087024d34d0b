"""The ZN readout: a 44 x 44 grid of quartz fibres read by 5 photomultipliers.

Channel 5 ("common") reads every pixel with (i + j) odd; channels 1-4 ("towers") read the pixels
with (i + j) even, one quadrant each (1: top-left, 2: top-right, 3: bottom-left, 4: bottom-right,
with i the row and j the column). A channel value is the sum of counts over its pixels.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

GRID = 44
SHAPE = (GRID, GRID)
FACE_CM = 7.04  # side of the ZN front face
PITCH_CM = FACE_CM / GRID  # fibre pitch, 1.6 mm
PIXEL_CENTRES_CM = (np.arange(GRID) - (GRID - 1) / 2) * PITCH_CM  # fibre centres from the face centre, float64
N_CHANNELS = 5
CHANNEL_NAMES = tuple(f"channel_{k}" for k in range(1, N_CHANNELS + 1))
# Below this mean total, Poisson counting alone gives > 14 % relative spread: such responses
# (particles that miss the face) measure counting statistics, not shower physics.
MIN_MEAN_COUNTS = 50.0


def channel_masks() -> np.ndarray:
    """Boolean masks of shape (5, 44, 44); every pixel belongs to exactly one channel."""
    i, j = np.indices(SHAPE)
    half = GRID // 2
    even = (i + j) % 2 == 0
    top, left = i < half, j < half
    return np.stack(
        [even & top & left, even & top & ~left, even & ~top & left, even & ~top & ~left, ~even]
    )


MASKS = channel_masks()
_MASKS_FLAT = MASKS.reshape(N_CHANNELS, -1).astype(np.float32)


def channel_sums(responses):
    """Channel values of a batch of responses (..., 44, 44) -> (..., 5), numpy or torch alike.

    Counts, not log counts: convert log(1 + x) images back with expm1 before calling.
    """
    if responses.shape[-2:] != SHAPE:
        raise DataError(f"expected responses of shape (..., {GRID}, {GRID}); found {tuple(responses.shape)}")
    flat = responses.reshape(*responses.shape[:-2], GRID * GRID)
    if isinstance(responses, np.ndarray):
        return flat.astype(np.float64) @ _MASKS_FLAT.T.astype(np.float64)
    import torch  # torch only when a tensor is passed, so the numpy path stays light

    masks = torch.as_tensor(_MASKS_FLAT, dtype=flat.dtype, device=flat.device)
    return flat @ masks.T


def pixel_edges_cm() -> tuple[np.ndarray, np.ndarray]:
    """Edges of the fibre cells in the face plane: x along columns (left to right), y along rows
    (row 0 at the top, so y decreases with the row index). The face centre is (0, 0)."""
    edges = (np.arange(GRID + 1) - GRID / 2) * PITCH_CM
    return edges, edges[::-1].copy()
