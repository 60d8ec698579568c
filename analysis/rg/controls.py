"""Controls and error bars (science.md section 4).

- Shuffle control: circularly shift each neuron independently in time by a uniform random
  offset. This breaks the correlations between neurons but keeps every neuron's own statistics
  (rate, amplitudes, autocorrelation up to the wrap), so the scaling must disappear (beta -> 1).
- Error bars: refit on random contiguous quarters of the recording (contiguous segments respect
  the temporal correlations that a random subsample of frames would hide); the error is the SD
  of the refits.
"""

from __future__ import annotations

import numpy as np


def circular_shift_control(activity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row rolled by its own offset drawn uniformly from 0..T-1."""
    x = np.asarray(activity)
    n, t = x.shape
    offsets = rng.integers(0, t, size=n)
    columns = (np.arange(t)[None, :] - offsets[:, None]) % t
    return np.take_along_axis(x, columns, axis=1)


def random_quarters(
    n_frames: int, n_segments: int, rng: np.random.Generator, fraction: float = 0.25
) -> list[tuple[int, int]]:
    """n_segments (start, stop) windows of floor(fraction * T) frames at uniform random starts."""
    length = int(n_frames * fraction)
    if length < 1:
        raise ValueError(f"a quarter of {n_frames} frames is empty")
    starts = rng.integers(0, n_frames - length + 1, size=n_segments)
    return [(int(s), int(s) + length) for s in starts]
