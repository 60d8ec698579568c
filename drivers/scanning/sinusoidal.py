"""Sinusoidal (resonant) scanning: equal-width pixels in space from samples equal in time.

Geometry (hardware.md section 2). The resonant mirror swings x(t) = -A cos(2 pi f (t - phi))
where t is the time since the line-clock edge that triggered the digitizer record and phi is
the line phase (how far the mirror lags the edge, plus every constant delay of the signal
chain). Forward lines sweep -A -> +A during the first half period, backward lines sweep back
during the second.

- Spatial fill fraction Fs: the part of +-A that is imaged (pixels span -Fs A .. +Fs A).
  Temporal fill fraction Ft: the part of each half period that is imaged,
  Ft = (2 / pi) asin(Fs), Fs = sin(Ft pi / 2) (Fs = 0.7 -> Ft = 0.4936).
- Equal-width pixels: boundaries b_k = linspace(-Fs, Fs, N + 1) in units of A. On the
  forward line x = b A at t_k = asin(b_k) / (2 pi f) from the line centre (1 / (4 f) after
  the edge); the backward line passes the same boundaries mirrored in time about its centre
  3 / (4 f): t = 3 / (4 f) - asin(b_k) / (2 pi f).
- A boundary at time t becomes the sample index round(t fs) (the line phase folded in before
  rounding), and pixel k takes samples [e_k, e_{k+1}): more samples land in edge pixels,
  where the mirror is slow, than in central ones (ScanImage golden case, 7925.52 Hz,
  100 MS/s, Fs = 0.9: 7 samples per centre pixel, 16 per edge pixel). Rounding gives
  sample j to the pixel holding most of the interval [j, j + 1) / fs, i.e. it reads sample j
  as the instant (j + 1/2) / fs; a digitizer whose record starts at the first sample clock
  after the trigger takes sample j on average at that instant (half a sample of trigger
  latency), so for it the line phase is the mirror's lag itself. Other constant delays
  are absorbed by the line phase.

A pixel is the mean of its samples (ScanImage's default; the mean keeps brightness flat
across the line although the sample counts differ).

Kernel speed. Every raw sample in a pixel has to be read and added once, so numpy's sum of
the raw buffer is the practical floor. Measured on this machine (one 512 x 512 frame at
100 MS/s, 264 records of 11,762 samples): numpy sum 0.73 ms; a per-line prefix sum with
differences at the pixel edges 2.2 ms; a per-pixel loop 1.7-2.0 ms (latency-bound: one
dependent add per sample, plus loop overhead per 7-16-sample pixel); the same per-pixel loop
run over 8 records at once (all records share the pixel edges, so 8 independent sums advance
together) 0.93 ms. `bin_records` is the last one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from drivers.errors import LimitError

#: records summed together by the binning kernel (independent add chains, see module doc)
RECORDS_PER_PASS = 8


def temporal_fill_fraction(spatial_fill_fraction: float) -> float:
    """Ft = (2 / pi) asin(Fs): the part of each half period spent inside the imaged field."""
    return 2.0 / math.pi * math.asin(spatial_fill_fraction)


def spatial_fill_fraction(temporal_fill_fraction_value: float) -> float:
    """Fs = sin(Ft pi / 2), the inverse of `temporal_fill_fraction`."""
    return math.sin(temporal_fill_fraction_value * math.pi / 2.0)


def pixel_boundaries(pixels: int, fill_fraction: float) -> np.ndarray:
    """b_k = linspace(-Fs, Fs, N + 1): equal-width pixel boundaries in units of the amplitude."""
    return np.linspace(-fill_fraction, fill_fraction, pixels + 1)


def boundary_times_s(pixels: int, fill_fraction: float, resonant_hz: float) -> np.ndarray:
    """t_k = asin(b_k) / (2 pi f): boundary times relative to the line centre (zero crossing)."""
    return np.arcsin(pixel_boundaries(pixels, fill_fraction)) / (2.0 * math.pi * resonant_hz)


def samples_per_pixel(
    pixels: int, fill_fraction: float, resonant_hz: float, sample_rate_hz: float
) -> np.ndarray:
    """diff(round(t_k fs)): digitizer samples in each pixel of a line (centred on a sample)."""
    times = boundary_times_s(pixels, fill_fraction, resonant_hz)
    return np.diff(np.round(times * sample_rate_hz).astype(np.int64))


def max_pixels_per_line(fill_fraction: float, resonant_hz: float, sample_rate_hz: float) -> int:
    """Most pixels a line can have with at least one sample in its centre pixel.

    The centre pixel is the fastest: it lasts (2 Fs / N) / (2 pi f), so it holds at least one
    sample when N <= fs Fs / (pi f).
    """
    return int(sample_rate_hz * fill_fraction / (math.pi * resonant_hz))


@dataclass(frozen=True)
class LineMap:
    """Where every pixel of a record's line(s) lies in the record, in digitizer samples.

    forward_edges[k]: first sample of forward pixel k (increasing, N + 1 values; pixel k is
        [forward_edges[k], forward_edges[k + 1])).
    backward_edges[k]: the backward line passes boundary b_k at this sample (decreasing in
        k; backward pixel k is [backward_edges[k + 1], backward_edges[k])). Empty for
        unidirectional scanning.
    segments_*: the same pixels in time order within the record, as the kernel reads them:
        start sample, sample count, line within the record (0 forward, 1 backward), pixel
        column and 1 / count.
    """

    resonant_hz: float
    sample_rate_hz: float
    line_phase_s: float
    fill_fraction: float
    forward_edges: np.ndarray
    backward_edges: np.ndarray
    segment_start: np.ndarray
    segment_samples: np.ndarray
    segment_line: np.ndarray
    segment_pixel: np.ndarray
    segment_weight: np.ndarray

    @property
    def pixels(self) -> int:
        return self.forward_edges.shape[0] - 1

    @property
    def bidirectional(self) -> bool:
        return self.backward_edges.shape[0] > 0

    @property
    def lines_per_record(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def first_sample(self) -> int:
        return int(self.forward_edges[0])

    @property
    def end_sample(self) -> int:
        """One past the last sample any pixel reads."""
        if self.bidirectional:
            return int(self.backward_edges[0])
        return int(self.forward_edges[-1])

    def samples_per_pixel(self) -> np.ndarray:
        """Forward-line sample counts per pixel (the backward line mirrors them within one)."""
        return np.diff(self.forward_edges)


def build_line_map(
    pixels: int,
    fill_fraction: float,
    resonant_hz: float,
    sample_rate_hz: float,
    line_phase_s: float,
    bidirectional: bool,
) -> LineMap:
    """Pixel edges of one record for the given mirror frequency and line phase.

    Raises LimitError naming the setting when a pixel would get no sample (more pixels than
    the sample rate allows) or when the fill fraction is outside (0, 1).
    """
    if not (0.0 < fill_fraction < 1.0):
        raise LimitError(
            f"fill_fraction = {fill_fraction:g} (spatial) must be inside (0, 1): 1 would image "
            "the turnarounds, where the mirror stops"
        )
    if pixels < 2:
        raise LimitError(f"pixels_per_line = {pixels} must be at least 2")
    if not (resonant_hz > 0 and sample_rate_hz > 0):
        raise LimitError(
            f"resonant_hz = {resonant_hz:g} and sample_rate_hz = {sample_rate_hz:g} must be > 0"
        )
    t_k = boundary_times_s(pixels, fill_fraction, resonant_hz)
    quarter_s = 0.25 / resonant_hz
    forward = np.round((line_phase_s + quarter_s + t_k) * sample_rate_hz).astype(np.int64)
    counts = np.diff(forward)
    if counts.min() < 1:
        limit = max_pixels_per_line(fill_fraction, resonant_hz, sample_rate_hz)
        raise LimitError(
            f"pixels_per_line = {pixels} is more than the samples allow: at sample_rate_hz = "
            f"{sample_rate_hz:g} Hz and a {resonant_hz:g} Hz mirror with fill_fraction = "
            f"{fill_fraction:g}, the centre pixels get {counts.min()} samples; use at most "
            f"{limit} pixels per line or a faster digitizer"
        )
    if forward[0] < 0:
        raise LimitError(
            f"line phase {line_phase_s * 1e6:g} us moves the first pixel before the line-clock "
            f"edge; the phase must be > {-(quarter_s + t_k[0]) * 1e6:.3f} us"
        )
    if bidirectional:
        backward = np.round((line_phase_s + 3.0 * quarter_s - t_k) * sample_rate_hz).astype(
            np.int64
        )
        if np.diff(backward).max() > -1:
            raise LimitError(
                f"pixels_per_line = {pixels} leaves a backward pixel without samples at "
                f"sample_rate_hz = {sample_rate_hz:g} Hz; use fewer pixels"
            )
        # time order: forward pixels 0..N-1, then backward pixels N-1..0
        start = np.concatenate((forward[:-1], backward[:0:-1]))
        samples = np.concatenate((counts, backward[-2::-1] - backward[:0:-1]))
        line = np.concatenate((np.zeros(pixels, np.int64), np.ones(pixels, np.int64)))
        column = np.concatenate((np.arange(pixels), np.arange(pixels - 1, -1, -1)))
    else:
        backward = np.zeros(0, np.int64)
        start, samples = forward[:-1].copy(), counts
        line = np.zeros(pixels, np.int64)
        column = np.arange(pixels, dtype=np.int64)
    return LineMap(
        resonant_hz=float(resonant_hz),
        sample_rate_hz=float(sample_rate_hz),
        line_phase_s=float(line_phase_s),
        fill_fraction=float(fill_fraction),
        forward_edges=forward,
        backward_edges=backward,
        segment_start=np.ascontiguousarray(start, np.int64),
        segment_samples=np.ascontiguousarray(samples, np.int64),
        segment_line=np.ascontiguousarray(line, np.int64),
        segment_pixel=np.ascontiguousarray(column, np.int64),
        segment_weight=1.0 / samples.astype(np.float64),
    )


def bin_frame(raw: np.ndarray, line_map: LineMap, out: np.ndarray) -> None:
    """Reconstruct one frame of one channel: raw (records, samples_per_record) int16 ->
    out (lines, pixels) int16, each pixel the rounded mean of its samples."""
    bin_records(
        raw,
        line_map.segment_start,
        line_map.segment_samples,
        line_map.segment_line,
        line_map.segment_pixel,
        line_map.segment_weight,
        line_map.lines_per_record,
        out,
    )


@numba.njit(cache=True, nogil=True)
def _store_mean(out: np.ndarray, line: int, pixel: int, total: int, weight: float) -> None:
    out[line, pixel] = np.int16(math.floor(total * weight + 0.5))


@numba.njit(cache=True, nogil=True)
def bin_records(
    raw: np.ndarray,
    seg_start: np.ndarray,
    seg_samples: np.ndarray,
    seg_line: np.ndarray,
    seg_pixel: np.ndarray,
    seg_weight: np.ndarray,
    lines_per_record: int,
    out: np.ndarray,
) -> None:
    """out[lines_per_record * r + seg_line[s], seg_pixel[s]] = mean of raw[r, segment s].

    raw: int16 (records, samples_per_record), one channel; records beyond those holding the
    out.shape[0] lines (flyback) are not read. Each sample is read and added once; 8 records
    are summed together so their add chains run in parallel (module doc). Means are rounded
    half up (floor(mean + 0.5)).
    """
    n_lines = out.shape[0]
    n_records = min(raw.shape[0], (n_lines + lines_per_record - 1) // lines_per_record)
    n_seg = seg_start.shape[0]
    r = 0
    while r + 8 <= n_records and lines_per_record * (r + 8) <= n_lines:
        r0 = raw[r]
        r1 = raw[r + 1]
        r2 = raw[r + 2]
        r3 = raw[r + 3]
        r4 = raw[r + 4]
        r5 = raw[r + 5]
        r6 = raw[r + 6]
        r7 = raw[r + 7]
        for s in range(n_seg):
            a = seg_start[s]
            e = a + seg_samples[s]
            s0 = np.int32(0)
            s1 = np.int32(0)
            s2 = np.int32(0)
            s3 = np.int32(0)
            s4 = np.int32(0)
            s5 = np.int32(0)
            s6 = np.int32(0)
            s7 = np.int32(0)
            for j in range(a, e):
                s0 += r0[j]
                s1 += r1[j]
                s2 += r2[j]
                s3 += r3[j]
                s4 += r4[j]
                s5 += r5[j]
                s6 += r6[j]
                s7 += r7[j]
            w = seg_weight[s]
            line = lines_per_record * r + seg_line[s]
            p = seg_pixel[s]
            _store_mean(out, line, p, s0, w)
            _store_mean(out, line + lines_per_record, p, s1, w)
            _store_mean(out, line + 2 * lines_per_record, p, s2, w)
            _store_mean(out, line + 3 * lines_per_record, p, s3, w)
            _store_mean(out, line + 4 * lines_per_record, p, s4, w)
            _store_mean(out, line + 5 * lines_per_record, p, s5, w)
            _store_mean(out, line + 6 * lines_per_record, p, s6, w)
            _store_mean(out, line + 7 * lines_per_record, p, s7, w)
        r += 8
    while r < n_records:  # the remaining records, one at a time
        row = raw[r]
        for s in range(n_seg):
            line = lines_per_record * r + seg_line[s]
            if line >= n_lines:
                continue
            a = seg_start[s]
            total = np.int32(0)
            for j in range(a, a + seg_samples[s]):
                total += row[j]
            _store_mean(out, line, seg_pixel[s], total, seg_weight[s])
        r += 1
