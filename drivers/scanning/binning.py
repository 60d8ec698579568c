"""Pixel binning of PMT samples: a pixel is the mean of the AI samples that belong to it."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def bin_pixels(
    raw: np.ndarray, starts: np.ndarray, samples_per_pixel: int, out: np.ndarray
) -> None:
    """out[l, p] = mean(raw[starts[l, p] : starts[l, p] + samples_per_pixel]), rounded.

    raw: int16 samples of one channel for one frame; starts: int64 (lines, pixels) first
    sample of every pixel (scan direction and line phase already folded in); out: int16.
    """
    lines, pixels = starts.shape
    half = samples_per_pixel // 2
    for line in range(lines):
        for p in range(pixels):
            s0 = starts[line, p]
            acc = 0
            for j in range(samples_per_pixel):
                acc += raw[s0 + j]
            # round half away from zero in integer arithmetic
            if acc >= 0:
                out[line, p] = (acc + half) // samples_per_pixel
            else:
                out[line, p] = -((-acc + half) // samples_per_pixel)
