"""Rigid motion correction: subpixel phase correlation against a reference, online and batch.

Convention. A frame's shift (dy, dx) in pixels of the full frame is the displacement of its
content relative to the reference: frame(y + dy, x + dx) ~ reference(y, x). ROIs are defined
on the reference, so ROI pixel (y, x) is read from the frame at (y + dy, x + dx).

Registration (per frame, no allocation in our code; numpy's FFT keeps its own work buffers):

1. Registration image: a centred crop of the frame, optionally binned b x b (sums). A 512 x 512
   frame binned 2 x 2 gives a 256 x 256 image: rfft2 + irfft2 of 256 x 256 costs ~0.5 ms versus
   ~5-7 ms at 512 x 512 (design.md), and binning keeps every photon (shot-noise-limited frames
   hold < 1 photon per pixel). The image's mean is subtracted and the edges are tapered to 0
   (a raised-cosine border), so the FFT's periodic wrap-around sees no edge step that would
   pull the peak to zero shift.
2. Phase correlation (Kuglin & Hines 1975): the cross-power spectrum F conj(R) is whitened
   (divided by its magnitude, so every spatial frequency votes with its phase only) and
   multiplied by a Gaussian G of spatial SD ``smoothing_px`` (binned pixels): the inverse FFT is
   then (up to noise) G's image, a sampled Gaussian centred on the true shift, and it is cut off
   well below the Nyquist frequency, where shot noise dominates the phases.
3. Peak: the maximum within +-``max_shift_px``, refined per axis by the three-point Gaussian fit
   (a parabola through the logarithms), exact for a sampled Gaussian. The normalised peak height
   (1 = identical images, ~0 = no common structure) is reported as the frame's ``peak``.
   Without common structure the phases are random and the normalised correlation is noise of
   SD sqrt(sum G^2) / sum G (sums over the full spectrum; ~0.008 for 256 x 256 images):
   ``peak_noise_sd``.

Bad frames are flagged, never registered silently: a frame with NaN/inf (``NONFINITE``), a
constant frame (all zero or saturated: ``FLAT``), a frame whose peak is below ``min_peak_sds``
noise SDs (``NO_MATCH``: e.g. shutter closed, nothing in focus; the maximum of pure noise over
the search window is ~4 SDs) or lies on the search limit (``AT_LIMIT``: moved further than
max_shift_px) gets status != OK; the shift is NaN for all but AT_LIMIT. Motion far beyond
max_shift_px can also land on a wrong peak inside the window: choose max_shift_px with margin.

Reference (``build_reference``): the mean of the reference frames most correlated with their
mean, then refined by registering all reference frames to it and averaging them shifted back
(Fourier shift), a few times; finally moved to the frames' mean position. A refreshed reference
(``MotionCorrector.refresh_reference``) is registered to the current one and shifted onto it,
so shifts and ROIs keep their coordinates.

Applying shifts cheaply (``ShiftedExtraction``): instead of resampling whole frames, each ROI
pixel is read at its shifted position with bilinear interpolation (the same fractional weights
for every pixel, since the shift is rigid; along a row run of an ROI the right neighbours of
one pixel are the left neighbours of the next, so ~2 frame reads per ROI pixel: 0.26 ms for
1,500 ROIs on 512 x 512 frames against 0.22 ms unshifted). Pixels whose four neighbours are not
all inside the frame are left out and the ROI's remaining weights are renormalised; an ROI with
no pixel left gives NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from analysis.rois import RoiSet

OK = 0
NONFINITE = 1
FLAT = 2
AT_LIMIT = 3
NO_MATCH = 4
STATUS_NAMES = {
    OK: "ok",
    NONFINITE: "non-finite pixels",
    FLAT: "constant frame",
    AT_LIMIT: "peak at the search limit",
    NO_MATCH: "no structure in common",
}

DEFAULT_REGISTRATION_SIZE_PX = 256
DEFAULT_SMOOTHING_PX = 1.15  # SD of the correlation peak, in registration pixels
DEFAULT_TAPER_FRACTION = 0.1  # each edge tapers over this fraction of the registration image
DEFAULT_MIN_PEAK_SDS = 6.0  # a peak below this many noise SDs of the correlation: no match
MIN_REFERENCE_FRAMES = 10
DEFAULT_REFERENCE_ITERATIONS = 3


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class RegistrationWindow:
    """Where the registration image comes from: frame rows y0:y1, columns x0:x1, binned
    bin_factor x bin_factor into an image of shape (height, width)."""

    frame_shape: tuple[int, int]
    y0: int
    y1: int
    x0: int
    x1: int
    bin_factor: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0) // self.bin_factor, (self.x1 - self.x0) // self.bin_factor

    @property
    def centre_px(self) -> tuple[float, float]:
        """Centre of the window in frame pixels."""
        return (self.y0 + self.y1 - 1) / 2.0, (self.x0 + self.x1 - 1) / 2.0


def registration_window(
    frame_shape: tuple[int, int],
    size_px: int = DEFAULT_REGISTRATION_SIZE_PX,
    mode: str = "bin",
) -> RegistrationWindow:
    """The registration window of frames of ``frame_shape`` for an FFT of at most size_px per
    side: ``"bin"`` bins the (centred, even-sized) frame by the smallest factor that fits, then
    crops the rest; ``"crop"`` takes the centred size_px x size_px region at full resolution."""
    height, width = (int(s) for s in frame_shape)
    size_px = int(size_px)
    if height < 16 or width < 16:
        raise ValueError(f"frames must be at least 16 x 16 pixels to register, got {frame_shape}")
    if size_px < 16:
        raise ValueError(f"size_px must be >= 16, got {size_px}")
    if mode == "bin":
        factor = max(1, math.ceil(min(height, width) / size_px))
    elif mode == "crop":
        factor = 1
    else:
        raise ValueError(f"mode = {mode!r}: choose 'bin' or 'crop'")
    h = min(size_px, height // factor) * factor
    w = min(size_px, width // factor) * factor
    y0, x0 = (height - h) // 2, (width - w) // 2
    return RegistrationWindow((height, width), y0, y0 + h, x0, x0 + w, factor)


def _taper(length: int, fraction: float) -> np.ndarray:
    """1-D raised-cosine (Tukey) window: 1 in the middle, falling to ~0 over the edges."""
    edge = max(1, int(round(fraction * length)))
    window = np.ones(length)
    ramp = 0.5 * (1.0 - np.cos(np.pi * (np.arange(edge) + 0.5) / edge))
    window[:edge] = ramp
    window[length - edge :] = ramp[::-1]
    return window


def _lowpass(shape: tuple[int, int], smoothing_px: float) -> tuple[np.ndarray, float]:
    """Gaussian of spatial SD smoothing_px in the rfft2 half-plane (DC set to 0), and the sums of
    G and of G^2 over the full (Hermitian) spectrum it stands for."""
    h, w = shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    gaussian = np.exp(-2.0 * (np.pi * smoothing_px) ** 2 * (ky**2 + kx**2))
    gaussian[0, 0] = 0.0
    multiplicity = np.full(kx.shape[1], 2.0)
    multiplicity[0] = 1.0
    if w % 2 == 0:
        multiplicity[-1] = 1.0
    full_sum = float((gaussian * multiplicity[None, :]).sum())
    full_sum_sq = float((gaussian**2 * multiplicity[None, :]).sum())
    return gaussian, full_sum, full_sum_sq


# --------------------------------------------------------------------------- kernels


@numba.njit(cache=True, nogil=True)
def _prepare(
    frame: np.ndarray,
    y0: int,
    x0: int,
    factor: int,
    taper_y: np.ndarray,
    taper_x: np.ndarray,
    out: np.ndarray,
) -> int:
    """Binned crop of frame into out, mean subtracted and tapered. Returns a status.
    Frame rows are read in order (sequential memory access)."""
    h, w = out.shape
    for i in range(h):
        for j in range(w):
            out[i, j] = 0.0
    for i in range(h):
        for a in range(factor):
            row = y0 + i * factor + a
            for j in range(w):
                acc = 0.0
                column = x0 + j * factor
                for b in range(factor):
                    acc += np.float64(frame[row, column + b])
                out[i, j] += acc
    total = 0.0
    low = out[0, 0]
    high = out[0, 0]
    for i in range(h):
        for j in range(w):
            v = out[i, j]
            total += v
            low = min(low, v)
            high = max(high, v)
    if not math.isfinite(total):
        return NONFINITE
    if high == low:
        return FLAT
    mean = total / (h * w)
    for i in range(h):
        ty = taper_y[i]
        for j in range(w):
            out[i, j] = (out[i, j] - mean) * ty * taper_x[j]
    return OK


@numba.njit(cache=True, nogil=True)
def _whitened_cross_power(
    spectrum: np.ndarray, reference_conj: np.ndarray, lowpass: np.ndarray, out: np.ndarray
) -> None:
    """out = G * F conj(R) / |F conj(R)| (0 where the product is 0)."""
    h, w = spectrum.shape
    for i in range(h):
        for j in range(w):
            f = spectrum[i, j]
            r = reference_conj[i, j]
            re = f.real * r.real - f.imag * r.imag
            im = f.real * r.imag + f.imag * r.real
            magnitude_sq = re * re + im * im
            if magnitude_sq > 0.0:
                scale = lowpass[i, j] / math.sqrt(magnitude_sq)
                out[i, j] = complex(re * scale, im * scale)
            else:
                out[i, j] = 0.0


@numba.njit(cache=True, nogil=True)
def _gaussian_offset(left: float, centre: float, right: float) -> float:
    """Sub-sample position of a peak from three samples: Gaussian (log-parabola) fit, or a
    parabola when a sample is not positive; clamped to [-0.5, 0.5]."""
    if left > 0.0 and centre > 0.0 and right > 0.0:
        a, b, c = math.log(left), math.log(centre), math.log(right)
    else:
        a, b, c = left, centre, right
    denominator = a - 2.0 * b + c
    if denominator >= 0.0:  # not a maximum (flat or noise): no refinement
        return 0.0
    offset = 0.5 * (a - c) / denominator
    return min(0.5, max(-0.5, offset))


@numba.njit(cache=True, nogil=True)
def _find_peak(correlation: np.ndarray, max_shift: int, out: np.ndarray) -> int:
    """Maximum of the periodic correlation within +-max_shift; writes (dy, dx, height) to out
    (registration pixels). Returns AT_LIMIT if the maximum lies on the search border."""
    h, w = correlation.shape
    best = -np.inf
    best_y = 0
    best_x = 0
    for dy in range(-max_shift, max_shift + 1):
        row = dy % h
        for dx in range(-max_shift, max_shift + 1):
            v = correlation[row, dx % w]
            if v > best:
                best = v
                best_y = dy
                best_x = dx
    centre = correlation[best_y % h, best_x % w]
    offset_y = _gaussian_offset(
        correlation[(best_y - 1) % h, best_x % w], centre, correlation[(best_y + 1) % h, best_x % w]
    )
    offset_x = _gaussian_offset(
        correlation[best_y % h, (best_x - 1) % w], centre, correlation[best_y % h, (best_x + 1) % w]
    )
    out[0] = best_y + offset_y
    out[1] = best_x + offset_x
    out[2] = best
    if abs(best_y) == max_shift or abs(best_x) == max_shift:
        return AT_LIMIT
    return OK


# --------------------------------------------------------------------------- online


class MotionCorrector:
    """Registers frames one at a time to a reference image (see the module docstring).

    reference: (H, W) image in the frames' coordinates (``build_reference``). max_shift_px: the
    largest shift searched, in frame pixels (e.g. 10 um of brain motion / pixel size). All
    buffers are allocated here; ``register`` allocates nothing of its own.
    """

    def __init__(
        self,
        reference: np.ndarray,
        max_shift_px: float,
        registration_size_px: int = DEFAULT_REGISTRATION_SIZE_PX,
        mode: str = "bin",
        smoothing_px: float = DEFAULT_SMOOTHING_PX,
        taper_fraction: float = DEFAULT_TAPER_FRACTION,
        min_peak_sds: float = DEFAULT_MIN_PEAK_SDS,
    ) -> None:
        reference = np.asarray(reference)
        if reference.ndim != 2:
            raise ValueError(f"reference must be a 2-D image (H, W), got shape {reference.shape}")
        self.frame_shape: tuple[int, int] = (int(reference.shape[0]), int(reference.shape[1]))
        self.window = registration_window(self.frame_shape, registration_size_px, mode)
        h, w = self.window.shape
        factor = self.window.bin_factor
        max_shift_px = float(max_shift_px)
        limit = (min(h, w) // 2 - 2) * factor
        if not (math.isfinite(max_shift_px) and 1.0 <= max_shift_px <= limit):
            raise ValueError(
                f"max_shift_px must be between 1 and {limit} (under half the registration "
                f"window of {h} x {w} binned-{factor} pixels), got {max_shift_px!r}"
            )
        self.max_shift_px = max_shift_px
        # search one binned pixel beyond the limit so a shift of exactly max_shift_px is inside
        self._max_shift_binned = int(math.ceil(max_shift_px / factor)) + 1
        smoothing_px = float(smoothing_px)
        if not (math.isfinite(smoothing_px) and 0.5 <= smoothing_px <= min(h, w) / 8):
            raise ValueError(
                f"smoothing_px must be between 0.5 and {min(h, w) / 8:g}, got {smoothing_px!r}"
            )
        taper_fraction = float(taper_fraction)
        if not (0.0 < taper_fraction <= 0.5):
            raise ValueError(f"taper_fraction must be in (0, 0.5], got {taper_fraction!r}")
        self.smoothing_px = smoothing_px
        self._options = {
            "registration_size_px": registration_size_px,
            "mode": mode,
            "smoothing_px": smoothing_px,
            "taper_fraction": taper_fraction,
            "min_peak_sds": min_peak_sds,
        }
        self._taper_y = _taper(h, taper_fraction)
        self._taper_x = _taper(w, taper_fraction)
        self._lowpass, lowpass_sum, lowpass_sum_sq = _lowpass((h, w), smoothing_px)
        self.peak_noise_sd = math.sqrt(lowpass_sum_sq) / lowpass_sum
        min_peak_sds = float(min_peak_sds)
        if not (math.isfinite(min_peak_sds) and min_peak_sds >= 0.0):
            raise ValueError(f"min_peak_sds must be a finite number >= 0, got {min_peak_sds!r}")
        self.min_peak = min_peak_sds * self.peak_noise_sd
        self._image = np.zeros((h, w), dtype=np.float64)
        self._spectrum = np.fft.rfft2(self._image)
        self._cross = np.zeros_like(self._spectrum)
        self._half_inverse = np.zeros_like(self._spectrum)
        self._correlation = np.zeros((h, w), dtype=np.float64)
        self._reference_conj = np.zeros_like(self._spectrum)
        self._peak = np.zeros(3, dtype=np.float64)
        self._peak_scale = h * w / lowpass_sum
        self.reference = np.zeros(self.frame_shape, dtype=np.float32)
        self.set_reference(reference)

    def set_reference(self, image: np.ndarray) -> None:
        """Use ``image`` (H, W) as the reference from now on (no alignment to the old one)."""
        image = np.asarray(image)
        if image.shape != self.frame_shape:
            raise ValueError(
                f"reference must have the frames' shape {self.frame_shape}, got {image.shape}"
            )
        status = self._prepare(image)
        if status != OK:
            raise ValueError(f"reference image unusable for registration: {STATUS_NAMES[status]}")
        np.fft.rfft2(self._image, out=self._spectrum)
        np.conjugate(self._spectrum, out=self._reference_conj)
        self.reference[:] = image

    def refresh_reference(self, frames: np.ndarray) -> tuple[float, float]:
        """Build a new reference from recent frames (T, H, W), shift it onto the current
        reference and use it. Returns the offset (dy, dx) that was removed."""
        new = build_reference(frames, self.max_shift_px, **self._options)
        offset = np.zeros(2)
        status = self.register(new, offset)
        if status not in (OK,):
            raise ValueError(
                f"the refreshed reference could not be aligned to the current one: "
                f"{STATUS_NAMES[status]}"
            )
        self.set_reference(shift_image(new, (-offset[0], -offset[1])))
        return float(offset[0]), float(offset[1])

    def _prepare(self, frame: np.ndarray) -> int:
        win = self.window
        return _prepare(
            frame, win.y0, win.x0, win.bin_factor, self._taper_y, self._taper_x, self._image
        )

    def register(self, frame: np.ndarray, out: np.ndarray) -> int:
        """Shift (dy, dx) of ``frame`` (H, W, any real dtype) relative to the reference, in frame
        pixels into out[0:2]; out[2] (if present) gets the normalised peak height. Returns the
        status (OK, NONFINITE, FLAT, NO_MATCH, AT_LIMIT); the shift is NaN unless OK or
        AT_LIMIT."""
        if not isinstance(frame, np.ndarray) or frame.shape != self.frame_shape:
            raise ValueError(
                f"frame must be a numpy array of shape {self.frame_shape}, got "
                f"{getattr(frame, 'shape', type(frame).__name__)}"
            )
        status = self._prepare(frame)
        if status != OK:
            out[0] = out[1] = np.nan
            if out.shape[0] > 2:
                out[2] = 0.0
            return status
        np.fft.rfft2(self._image, out=self._spectrum)
        _whitened_cross_power(self._spectrum, self._reference_conj, self._lowpass, self._cross)
        # inverse rfft2 in two steps: numpy's irfft2 ignores ``out`` (numpy 2.4)
        np.fft.ifft(self._cross, axis=0, out=self._half_inverse)
        np.fft.irfft(self._half_inverse, n=self._image.shape[1], axis=1, out=self._correlation)
        status = _find_peak(self._correlation, self._max_shift_binned, self._peak)
        peak = self._peak[2] * self._peak_scale
        if out.shape[0] > 2:
            out[2] = peak
        if peak < self.min_peak:
            out[0] = out[1] = np.nan
            return NO_MATCH
        factor = self.window.bin_factor
        # binning maps frame pixels [k b, (k + 1) b) to binned pixel k: a shift of d binned
        # pixels is d b frame pixels
        out[0] = self._peak[0] * factor
        out[1] = self._peak[1] * factor
        if status == OK and (
            abs(out[0]) > self.max_shift_px + 0.5 * factor
            or abs(out[1]) > self.max_shift_px + 0.5 * factor
        ):
            status = AT_LIMIT
        return status


# --------------------------------------------------------------------------- batch


def register_frames(
    frames: np.ndarray, corrector: MotionCorrector
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Register every frame of (T, H, W) with ``corrector``: (shifts (T, 2), peak (T,),
    status (T,)). The same computation as online, frame by frame, so results are identical."""
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must have shape (T, H, W), got {frames.shape}")
    shifts = np.empty((frames.shape[0], 2))
    peaks = np.empty(frames.shape[0])
    status = np.empty(frames.shape[0], dtype=np.int64)
    result = np.zeros(3)
    for t in range(frames.shape[0]):
        status[t] = corrector.register(frames[t], result)
        shifts[t] = result[:2]
        peaks[t] = result[2]
    return shifts, peaks, status


def shift_image(image: np.ndarray, shift_yx: tuple[float, float]) -> np.ndarray:
    """The image with its content moved by (dy, dx) pixels (Fourier shift theorem: exact for a
    band-limited periodic image; content leaving one edge re-enters at the other). float64."""
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    phase = np.exp(-2j * np.pi * (ky * shift_yx[0] + kx * shift_yx[1]))
    return np.fft.irfft2(np.fft.rfft2(image) * phase, s=(h, w))


def corrected_frames(frames: np.ndarray, shifts_yx: np.ndarray) -> np.ndarray:
    """Frames (T, H, W) moved back onto the reference: frame t shifted by -shifts_yx[t]
    (Fourier shift, float32), e.g. the reference period before ROI detection. Frames with a
    NaN shift (flagged) come back as NaN. Offline use: allocates."""
    frames = np.asarray(frames)
    shifts = np.asarray(shifts_yx, dtype=np.float64)
    if frames.ndim != 3 or shifts.shape != (frames.shape[0], 2):
        raise ValueError(
            f"frames must be (T, H, W) and shifts_yx (T, 2), got {frames.shape} and {shifts.shape}"
        )
    out = np.empty(frames.shape, dtype=np.float32)
    for t in range(frames.shape[0]):
        if np.isfinite(shifts[t]).all():
            out[t] = shift_image(frames[t], (-shifts[t, 0], -shifts[t, 1]))
        else:
            out[t] = np.nan
    return out


def build_reference(
    frames: np.ndarray,
    max_shift_px: float,
    n_iterations: int = DEFAULT_REFERENCE_ITERATIONS,
    registration_size_px: int = DEFAULT_REGISTRATION_SIZE_PX,
    mode: str = "bin",
    smoothing_px: float = DEFAULT_SMOOTHING_PX,
    taper_fraction: float = DEFAULT_TAPER_FRACTION,
    min_peak_sds: float = DEFAULT_MIN_PEAK_SDS,
) -> np.ndarray:
    """Reference image (float32, H x W) from a reference period of frames (T, H, W).

    1. Seed: the mean of the frames (at least MIN_REFERENCE_FRAMES, 20 % of them) most correlated
       with the mean of all frames (the stillest, most typical ones).
    2. n_iterations times: register every frame to the current reference and average the frames
       shifted back onto it (Fourier shift).
    3. Move the result to the mean position of the frames (their mean shift becomes 0), so the
       reference does not inherit the seed frames' offset.
    Raises ValueError for fewer than MIN_REFERENCE_FRAMES frames or unusable frames.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must have shape (T, H, W), got {frames.shape}")
    n_frames = frames.shape[0]
    if n_frames < MIN_REFERENCE_FRAMES:
        raise ValueError(
            f"a reference needs at least {MIN_REFERENCE_FRAMES} frames, got {n_frames}: "
            "lengthen the reference period"
        )
    if isinstance(n_iterations, bool) or not isinstance(n_iterations, int) or n_iterations < 1:
        raise ValueError(f"n_iterations must be an integer >= 1, got {n_iterations!r}")
    data = frames.astype(np.float64)
    if not np.isfinite(data).all():
        raise ValueError("reference frames contain NaN or inf; drop those frames first")
    mean = data.mean(axis=0)
    centred = data.reshape(n_frames, -1) - data.reshape(n_frames, -1).mean(axis=1, keepdims=True)
    target = mean.ravel() - mean.mean()
    norms = np.linalg.norm(centred, axis=1) * np.linalg.norm(target)
    correlation = centred @ target / np.where(norms > 0, norms, np.inf)
    n_seed = max(MIN_REFERENCE_FRAMES, n_frames // 5)
    reference = data[np.argsort(-correlation)[:n_seed]].mean(axis=0)
    result = np.zeros(3)
    shifts = np.zeros((n_frames, 2))
    for _ in range(n_iterations):
        corrector = MotionCorrector(reference, max_shift_px, registration_size_px, mode,
                                    smoothing_px, taper_fraction, min_peak_sds)  # fmt: skip
        accumulated = np.zeros_like(reference)
        n_used = 0
        for t in range(n_frames):
            status = corrector.register(frames[t], result)
            if status == OK:
                shifts[t] = result[:2]
                accumulated += shift_image(data[t], (-result[0], -result[1]))
                n_used += 1
            else:
                shifts[t] = np.nan
        if n_used < MIN_REFERENCE_FRAMES:
            raise ValueError(
                f"only {n_used} of {n_frames} reference frames could be registered (need "
                f"{MIN_REFERENCE_FRAMES}); is max_shift_px = {max_shift_px:g} large enough?"
            )
        reference = accumulated / n_used
    centre = np.nanmean(shifts, axis=0)
    return shift_image(reference, (centre[0], centre[1])).astype(np.float32)


# --------------------------------------------------------------------------- extraction


@numba.njit(cache=True, nogil=True)
def _extract_shifted(
    frame: np.ndarray,
    run_y: np.ndarray,
    run_x: np.ndarray,
    run_start: np.ndarray,
    run_roi: np.ndarray,
    pixel_weight: np.ndarray,
    shift_y: float,
    shift_x: float,
    weight_sum: np.ndarray,
    out: np.ndarray,
) -> None:
    """out[roi] = weighted mean over the ROI's pixels of the frame bilinearly interpolated at
    (y + shift_y, x + shift_x); pixels without all 4 neighbours in the frame are left out.

    Pixels come in row runs (same ROI, same row, consecutive columns; run r covers pixels
    run_start[r]:run_start[r + 1] starting at (run_y[r], run_x[r])), so along a run the right
    neighbours of one pixel are the left neighbours of the next: 2 frame reads per pixel."""
    h, w = frame.shape
    n_rois = out.shape[0]
    for r in range(n_rois):
        out[r] = 0.0
        weight_sum[r] = 0.0
    iy = int(math.floor(shift_y))
    ix = int(math.floor(shift_x))
    fy = shift_y - iy
    fx = shift_x - ix
    w00 = (1.0 - fy) * (1.0 - fx)
    w01 = (1.0 - fy) * fx
    w10 = fy * (1.0 - fx)
    w11 = fy * fx
    for run in range(run_y.shape[0]):
        y = run_y[run] + iy
        if y < 0 or y + 1 >= h:
            continue  # the whole run left the frame
        x_first = run_x[run] + ix
        first = run_start[run]
        length = run_start[run + 1] - first
        # pixels k of the run with 0 <= x_first + k and x_first + k + 1 < w
        k0 = max(0, -x_first)
        k1 = min(length, w - 1 - x_first)
        if k1 <= k0:
            continue
        x = x_first + k0
        left_top = np.float64(frame[y, x])
        left_bottom = np.float64(frame[y + 1, x])
        total = 0.0
        total_weight = 0.0
        for k in range(k0, k1):
            x = x_first + k + 1
            right_top = np.float64(frame[y, x])
            right_bottom = np.float64(frame[y + 1, x])
            value = w00 * left_top + w01 * right_top + w10 * left_bottom + w11 * right_bottom
            weight = pixel_weight[first + k]
            total += weight * value
            total_weight += weight
            left_top = right_top
            left_bottom = right_bottom
        roi = run_roi[run]
        out[roi] += total
        weight_sum[roi] += total_weight
    for r in range(n_rois):
        if weight_sum[r] > 0.0:
            out[r] = out[r] / weight_sum[r]
        else:
            out[r] = np.nan


class ShiftedExtraction:
    """Weighted ROI means of frames displaced by a rigid shift (see the module docstring).

    rois: cell ROIs or neuropil annuli (analysis.neuropil). With shift (0, 0) the
    result equals analysis.rois.extract except for pixels on the last row or column (left out:
    their bilinear neighbourhood leaves the frame)."""

    def __init__(self, rois: RoiSet) -> None:
        self.shape: tuple[int, int] = (int(rois.shape[0]), int(rois.shape[1]))
        self.n_rois = int(rois.offsets.shape[0] - 1)
        pixels = np.asarray(rois.pixels, dtype=np.int64)
        roi_of_pixel = np.repeat(np.arange(self.n_rois, dtype=np.int64), np.diff(rois.offsets))
        # frame order (reads run forward in memory), cut into row runs of one ROI
        order = np.argsort(pixels, kind="stable")
        pixels, roi_of_pixel = pixels[order], roi_of_pixel[order]
        width = self.shape[1]
        ys, xs = pixels // width, pixels % width
        new_run = np.ones(pixels.size, dtype=bool)
        new_run[1:] = (roi_of_pixel[1:] != roi_of_pixel[:-1]) | (ys[1:] != ys[:-1])
        new_run[1:] |= xs[1:] != xs[:-1] + 1
        starts = np.flatnonzero(new_run)
        self._run_y = np.ascontiguousarray(ys[starts], dtype=np.int64)
        self._run_x = np.ascontiguousarray(xs[starts], dtype=np.int64)
        self._run_start = np.append(starts, pixels.size).astype(np.int64)
        self._run_roi = np.ascontiguousarray(roi_of_pixel[starts], dtype=np.int64)
        self._weight = np.ascontiguousarray(np.asarray(rois.weights)[order], dtype=np.float64)
        self._weight_sum = np.zeros(self.n_rois, dtype=np.float64)

    def extract(self, frame: np.ndarray, shift_yx: np.ndarray, out: np.ndarray) -> np.ndarray:
        """ROI means of ``frame`` read at the shifted positions into out (float32 or float64,
        (n_rois,)); returns out. A NaN shift (flagged frame) gives NaN for every ROI."""
        if not isinstance(frame, np.ndarray) or frame.shape != self.shape:
            raise ValueError(
                f"frame must be a numpy array of shape {self.shape}, got "
                f"{getattr(frame, 'shape', type(frame).__name__)}"
            )
        if (
            not isinstance(out, np.ndarray)
            or out.shape != (self.n_rois,)
            or out.dtype not in (np.float32, np.float64)
        ):
            raise ValueError(
                f"out must be a float32 or float64 array of shape ({self.n_rois},), got "
                f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
            )
        shift_y, shift_x = float(shift_yx[0]), float(shift_yx[1])
        if not (math.isfinite(shift_y) and math.isfinite(shift_x)):
            out[:] = np.nan
            return out
        _extract_shifted(
            frame, self._run_y, self._run_x, self._run_start, self._run_roi, self._weight,
            shift_y, shift_x, self._weight_sum, out,
        )  # fmt: skip
        return out
