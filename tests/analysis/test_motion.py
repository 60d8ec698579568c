"""Rigid motion correction: accuracy on shot-noise movies, conventions, bad frames, extraction."""

import numpy as np
import pytest

from analysis.accuracy import motion_rms_error
from analysis.motion import (
    AT_LIMIT,
    FLAT,
    NO_MATCH,
    NONFINITE,
    OK,
    MotionCorrector,
    ShiftedExtraction,
    build_reference,
    corrected_frames,
    register_frames,
    registration_window,
)
from analysis.rois import RoiSet, extract

# The simulated rig's raster (docs: 208 x 208 pixels over 240 um) and the world's specimen:
# somata of radius 6.5 +- 1 um with a nucleus at 30 % brightness, lognormal brightness (log-SD
# 0.35), ~90,000 cells / mm^3 cut by a ~15 um in-focus slab, textured neuropil (relative SD
# 0.25 at ~8 um). At 30 mW the world gives ~0.9 photons per pixel and frame in cytosol and 0.18
# in neuropil, which makes the median ROI noise level ~3.4 %/sqrt(s); nu scales as
# 1/sqrt(photons), so a target nu scales both rates by (3.4 / nu)^2.
PIXEL_UM = 240.0 / 208
FRAME_PX = 160
NU_AT_REFERENCE_RATES = 3.4
CYTOSOL_PHOTONS = 0.9
NEUROPIL_PHOTONS = 0.18


def _specimen(rng: np.random.Generator, size_px: int, margin_px: int = 16) -> dict:
    extent_px = size_px + 2 * margin_px
    area_um2 = (extent_px * PIXEL_UM) ** 2
    n_cells = int(90_000 * area_um2 * 1e-6 * 0.015)
    radius_px = rng.normal(6.5, 1.0, n_cells) * rng.uniform(0.5, 1.0, n_cells) / PIXEL_UM
    # neuropil texture: white noise smoothed with a Gaussian of SD 4 um on a periodic canvas
    # twice the frame, so that moving it (Fourier shift, exact for this band-limited field)
    # never wraps content into the frame
    canvas = 2 * size_px
    k = np.fft.fftfreq(canvas)
    smoothing = np.exp(-2 * (np.pi * 4.0 / PIXEL_UM) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2))
    texture = np.fft.fft2(rng.normal(size=(canvas, canvas))) * smoothing
    texture /= np.real(np.fft.ifft2(texture)).std()
    return {
        "centre": rng.uniform(-margin_px, size_px + margin_px, (n_cells, 2)),
        "radius": np.maximum(radius_px, 1.5),
        "brightness": np.exp(rng.normal(0.0, 0.35, n_cells)),
        "texture_spectrum": texture,
    }


def _render(spec: dict, size_px: int, shift_yx, cytosol: float, neuropil: float, gain=None):
    """Expected photons per pixel with the specimen's content moved by shift_yx (pixel centres
    sampled; soma edges 0.25 px soft)."""
    texture_spectrum = spec["texture_spectrum"]
    canvas = texture_spectrum.shape[0]
    k = np.fft.fftfreq(canvas)
    phase = np.exp(-2j * np.pi * (k[:, None] * shift_yx[0] + k[None, :] * shift_yx[1]))
    start = (canvas - size_px) // 2
    texture = np.real(np.fft.ifft2(texture_spectrum * phase))
    texture = texture[start : start + size_px, start : start + size_px]
    image = neuropil * np.clip(1.0 + 0.25 * texture, 0.0, None)
    n_cells = spec["radius"].size
    gain = np.ones(n_cells) if gain is None else gain
    reach = int(np.ceil(spec["radius"].max())) + 2
    offsets = np.arange(-reach, reach + 1)
    cell = spec["centre"] + np.asarray(shift_yx)
    rows = np.floor(cell[:, 0])[:, None].astype(int) + offsets[None, :]  # (n, B)
    cols = np.floor(cell[:, 1])[:, None].astype(int) + offsets[None, :]
    dy = rows + 0.5 - cell[:, 0:1]
    dx = cols + 0.5 - cell[:, 1:2]
    distance = np.hypot(dy[:, :, None], dx[:, None, :])  # (n, B, B)
    radius = spec["radius"][:, None, None]
    inside = 1.0 / (1.0 + np.exp(np.clip((distance - radius) / 0.25, -50, 50)))
    nucleus = 1.0 / (1.0 + np.exp(np.clip((distance - 0.5 * radius) / 0.25, -50, 50)))
    level = (cytosol * spec["brightness"] * gain)[:, None, None] * inside * (1 - 0.7 * nucleus)
    valid = (rows[:, :, None] >= 0) & (rows[:, :, None] < size_px)
    valid = valid & (cols[:, None, :] >= 0) & (cols[:, None, :] < size_px)
    flat = (rows[:, :, None] * size_px + cols[:, None, :])[valid]
    occupancy = np.bincount(flat, inside[valid], minlength=size_px * size_px)
    cells = np.bincount(flat, level[valid], minlength=size_px * size_px)
    image = image.ravel() * np.clip(1.0 - occupancy, 0.0, 1.0) + cells
    return image.reshape(size_px, size_px)


def _shot_noise_movie(rng, shifts_yx, nu, size_px=FRAME_PX, active_fraction=0.1):
    """Poisson frames of a specimen moved by shifts_yx (T, 2) px, with photon rates that give
    ROI noise level ~nu; in each frame a fraction of the cells is active (up to 3x brighter).
    Returns (frames uint16, the expected image at shift 0, the specimen)."""
    scale = (NU_AT_REFERENCE_RATES / nu) ** 2
    spec = _specimen(rng, size_px)
    n_cells = spec["radius"].size
    frames = np.empty((len(shifts_yx), size_px, size_px), dtype=np.uint16)
    for t, shift in enumerate(shifts_yx):
        active = rng.random(n_cells) < active_fraction
        gain = 1.0 + np.where(active, rng.uniform(0, 2, n_cells), 0.0)
        expected = _render(spec, size_px, shift, CYTOSOL_PHOTONS * scale, NEUROPIL_PHOTONS * scale,
                           gain)  # fmt: skip
        frames[t] = rng.poisson(expected)
    clean = _render(spec, size_px, (0.0, 0.0), CYTOSOL_PHOTONS * scale, NEUROPIL_PHOTONS * scale)
    return frames, clean, spec


def _running_shifts(rng, n_frames, max_px):
    """A still period, then running-like jumps and jitter up to max_px, plus slow drift."""
    t = np.arange(n_frames)
    shifts = np.zeros((n_frames, 2))
    shifts += 0.004 * t[:, None] * rng.uniform(-1, 1, 2)  # drift
    running = t >= n_frames // 3
    shifts[running] += rng.uniform(-max_px, max_px, (running.sum(), 2)) * 0.8
    shifts[:, :] += 0.3 * rng.normal(size=(n_frames, 2))
    return np.clip(shifts, -max_px, max_px)


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("nu", [2.0, 3.0, 4.0])
def test_rms_error_at_most_0_2_px_with_a_reference_built_from_the_noisy_frames(nu):
    rng = np.random.default_rng(int(nu * 10))
    shifts = _running_shifts(rng, 90, max_px=8.0)
    frames, _, _ = _shot_noise_movie(rng, shifts, nu)
    reference = build_reference(frames[:30], max_shift_px=12)
    corrector = MotionCorrector(reference, max_shift_px=12)
    estimated, peak, status = register_frames(frames, corrector)
    assert (status == OK).all()
    assert motion_rms_error(estimated, shifts) <= 0.2


def test_shift_sign_convention_content_moved_by_plus_d_reads_plus_d():
    rng = np.random.default_rng(1)
    frames, clean, _ = _shot_noise_movie(rng, [(3.3, -5.6)], nu=2.0)
    corrector = MotionCorrector(clean, max_shift_px=10)
    out = np.zeros(3)
    assert corrector.register(frames[0], out) == OK
    assert out[0] == pytest.approx(3.3, abs=0.3) and out[1] == pytest.approx(-5.6, abs=0.3)
    assert 0.0 < out[2] < 1.0  # normalised peak: some, but not all, structure in common
    assert corrector.register(clean, out) == OK
    assert out[2] == pytest.approx(1.0, abs=0.02) and np.abs(out[:2]).max() < 1e-6


def test_binned_registration_of_large_frames_reports_full_resolution_pixels():
    rng = np.random.default_rng(2)
    frames, clean, _ = _shot_noise_movie(rng, [(4.4, 2.2), (-6.1, 0.7)], nu=2.0, size_px=320)
    corrector = MotionCorrector(clean, max_shift_px=10, registration_size_px=160)
    assert corrector.window.bin_factor == 2 and corrector.window.shape == (160, 160)
    shifts, _, status = register_frames(frames, corrector)
    assert (status == OK).all()
    np.testing.assert_allclose(shifts, [(4.4, 2.2), (-6.1, 0.7)], atol=0.35)


def test_numba_registration_equals_a_plain_numpy_phase_correlation():
    rng = np.random.default_rng(3)
    frames, clean, _ = _shot_noise_movie(rng, [(1.7, -2.2)], nu=3.0, size_px=96)
    corrector = MotionCorrector(clean, max_shift_px=8, smoothing_px=1.15, taper_fraction=0.1)
    out = np.zeros(3)
    corrector.register(frames[0], out)

    def prepare(image):
        image = np.asarray(image, dtype=np.float64)
        edge = round(0.1 * 96)
        ramp = 0.5 * (1 - np.cos(np.pi * (np.arange(edge) + 0.5) / edge))
        taper = np.ones(96)
        taper[:edge], taper[-edge:] = ramp, ramp[::-1]
        return (image - image.mean()) * taper[:, None] * taper[None, :]

    cross = np.fft.fft2(prepare(frames[0])) * np.conj(np.fft.fft2(prepare(clean)))
    k = np.fft.fftfreq(96)
    lowpass = np.exp(-2 * (np.pi * 1.15) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2))
    lowpass[0, 0] = 0
    correlation = np.real(np.fft.ifft2(cross / np.abs(cross) * lowpass))
    window = np.roll(np.roll(correlation, 9, 0), 9, 1)[:19, :19]  # shifts -9..9
    py, px = np.unravel_index(np.argmax(window), window.shape)
    centre = np.log(window[py, px])
    fit_y = (
        0.5
        * (np.log(window[py - 1, px]) - np.log(window[py + 1, px]))
        / (np.log(window[py - 1, px]) - 2 * centre + np.log(window[py + 1, px]))
    )
    fit_x = (
        0.5
        * (np.log(window[py, px - 1]) - np.log(window[py, px + 1]))
        / (np.log(window[py, px - 1]) - 2 * centre + np.log(window[py, px + 1]))
    )
    assert out[0] == pytest.approx(py - 9 + fit_y, abs=1e-9)
    assert out[1] == pytest.approx(px - 9 + fit_x, abs=1e-9)


# --------------------------------------------------------------------------- reference


def test_reference_recovers_the_specimen_at_the_mean_position_of_the_frames():
    rng = np.random.default_rng(4)
    shifts = rng.uniform(-4, 4, (40, 2))
    frames, _, spec = _shot_noise_movie(rng, shifts, nu=2.0)
    reference = build_reference(frames, max_shift_px=8)
    scale = (NU_AT_REFERENCE_RATES / 2.0) ** 2
    centre = shifts.mean(axis=0)
    moved = _render(spec, FRAME_PX, centre, CYTOSOL_PHOTONS * scale, NEUROPIL_PHOTONS * scale)
    corrector = MotionCorrector(moved, max_shift_px=8)
    out = np.zeros(3)
    corrector.register(reference, out)
    assert np.hypot(out[0], out[1]) < 0.15  # the reference sits at the frames' mean position
    sharp = np.corrcoef(reference[20:-20, 20:-20].ravel(), moved[20:-20, 20:-20].ravel())[0, 1]
    assert sharp > 0.9


def test_refreshed_reference_keeps_the_coordinates_of_the_old_one():
    rng = np.random.default_rng(5)
    early = rng.uniform(-2, 2, (30, 2))
    late = rng.uniform(-2, 2, (30, 2)) + (5.0, -3.0)  # the brain has drifted
    frames, _, _ = _shot_noise_movie(rng, np.concatenate([early, late]), nu=2.0)
    corrector = MotionCorrector(build_reference(frames[:30], max_shift_px=10), max_shift_px=10)
    before, _, _ = register_frames(frames[30:], corrector)
    removed = corrector.refresh_reference(frames[30:])
    after, _, _ = register_frames(frames[30:], corrector)
    assert np.hypot(*removed) == pytest.approx(np.hypot(5.0, -3.0), abs=1.0)
    np.testing.assert_allclose(after.mean(axis=0), before.mean(axis=0), atol=0.1)


def test_corrected_frames_are_moved_back_onto_the_reference():
    rng = np.random.default_rng(11)
    shifts = rng.uniform(-5, 5, (12, 2))
    frames, clean, _ = _shot_noise_movie(rng, shifts, nu=2.0)
    corrector = MotionCorrector(clean, max_shift_px=8)
    estimated, _, _ = register_frames(frames, corrector)
    estimated[3] = np.nan  # a flagged frame
    corrected = corrected_frames(frames, estimated)
    assert np.isnan(corrected[3]).all()
    residual, _, status = register_frames(np.delete(corrected, 3, axis=0), corrector)
    assert (status == OK).all() and np.abs(residual).max() < 0.3


# --------------------------------------------------------------------------- bad frames


def test_bad_frames_are_flagged_with_a_status_and_nan_shifts():
    rng = np.random.default_rng(6)
    frames, clean, _ = _shot_noise_movie(rng, [(0, 0), (8.0, 0.0)], nu=3.0, size_px=96)
    corrector = MotionCorrector(clean, max_shift_px=5)
    out = np.zeros(3)
    bad = frames[0].astype(np.float32)
    bad[10, 10] = np.nan
    assert corrector.register(bad, out) == NONFINITE and np.isnan(out[:2]).all()
    assert corrector.register(np.zeros((96, 96), np.uint16), out) == FLAT
    assert np.isnan(out[:2]).all()
    saturated = np.full((96, 96), 65535, np.uint16)
    assert corrector.register(saturated, out) == FLAT
    assert corrector.register(frames[1], out) == AT_LIMIT  # moved 8 px, limit 5 px
    assert out[0] >= 5.0
    dark = rng.poisson(0.05, (96, 96)).astype(np.uint16)  # shutter closed: dark counts only
    assert corrector.register(dark, out) == NO_MATCH and np.isnan(out[:2]).all()


def test_peak_noise_sd_is_the_spread_of_the_correlation_of_unrelated_images():
    rng = np.random.default_rng(16)
    reference = rng.normal(size=(128, 128))
    corrector = MotionCorrector(reference, max_shift_px=40, min_peak_sds=0.0)
    values = []
    for _ in range(20):
        corrector.register(rng.normal(size=(128, 128)), np.zeros(3))
        values.append(corrector._correlation.ravel() * corrector._peak_scale)
    assert np.std(np.concatenate(values)) == pytest.approx(corrector.peak_noise_sd, rel=0.05)


def test_bad_parameters_and_short_reference_periods_raise_clear_errors():
    image = np.random.default_rng(7).random((64, 64))
    with pytest.raises(ValueError, match=r"at least 10 frames, got 5: lengthen the reference"):
        build_reference(np.zeros((5, 64, 64)), max_shift_px=4)
    with pytest.raises(ValueError, match="max_shift_px must be between 1 and"):
        MotionCorrector(image, max_shift_px=40)
    with pytest.raises(ValueError, match="constant frame"):
        MotionCorrector(np.ones((64, 64)), max_shift_px=4)
    with pytest.raises(ValueError, match="mode"):
        registration_window((64, 64), mode="zoom")
    corrector = MotionCorrector(image, max_shift_px=4)
    with pytest.raises(ValueError, match=r"shape \(64, 64\)"):
        corrector.register(np.zeros((32, 32)), np.zeros(3))


# --------------------------------------------------------------------------- extraction


def _disc_rois(shape, centres, radius):
    """Disc ROIs weighted more at their centre (as suite2p's lam)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    distance_sq = np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 for cy, cx in centres])
    masks = distance_sq <= radius**2
    return RoiSet.from_masks(masks, np.exp(-distance_sq / (2.0 * radius**2)) * masks)


def test_shifted_extraction_is_bilinear_sampling_at_the_shifted_pixels():
    rng = np.random.default_rng(8)
    frame = rng.random((40, 50)).astype(np.float32)
    rois = _disc_rois(frame.shape, [(10, 12), (25, 30), (30, 8)], 4)
    extraction = ShiftedExtraction(rois)
    out = np.zeros(rois.n_rois)
    dy, dx = 1.3, -2.6
    extraction.extract(frame, np.array([dy, dx]), out)
    for r in range(rois.n_rois):
        pixels = rois.roi_pixels(r)
        w = rois.weights[rois.offsets[r] : rois.offsets[r + 1]].astype(np.float64)
        y = pixels // 50 + dy
        x = pixels % 50 + dx
        y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
        fy, fx = y - y0, x - x0
        top = (1 - fx) * frame[y0, x0] + fx * frame[y0, x0 + 1]
        bottom = (1 - fx) * frame[y0 + 1, x0] + fx * frame[y0 + 1, x0 + 1]
        values = (1 - fy) * top + fy * bottom
        assert out[r] == pytest.approx(np.sum(w * values) / w.sum(), rel=1e-9)


def test_zero_shift_equals_plain_extraction_and_integer_shift_equals_moved_rois():
    rng = np.random.default_rng(9)
    frame = rng.random((40, 50)).astype(np.float32)
    rois = _disc_rois(frame.shape, [(10, 12), (25, 30)], 5)
    expected = np.zeros(2, np.float32)
    extract(frame, rois, expected)
    out = np.zeros(2, np.float32)
    ShiftedExtraction(rois).extract(frame, np.array([0.0, 0.0]), out)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    moved = _disc_rois(frame.shape, [(13, 10), (28, 28)], 5)  # the same discs moved by (3, -2)
    extract(frame, moved, expected)
    ShiftedExtraction(rois).extract(frame, np.array([3.0, -2.0]), out)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_pixels_shifted_out_of_the_frame_are_dropped_and_weights_renormalised():
    frame = np.ones((30, 30), np.float32)
    frame[:, :15] = 3.0
    rois = _disc_rois(frame.shape, [(15, 3)], 3)
    out = np.zeros(1)
    ShiftedExtraction(rois).extract(frame, np.array([0.0, -2.0]), out)
    assert out[0] == pytest.approx(3.0)  # a mean of the pixels left, not diluted by zeros
    ShiftedExtraction(rois).extract(frame, np.array([0.0, -10.0]), out)
    assert np.isnan(out[0])  # nothing left inside the frame
    ShiftedExtraction(rois).extract(frame, np.array([np.nan, np.nan]), out)
    assert np.isnan(out[0])  # a flagged frame (NaN shift) gives NaN, not a stale value


def test_motion_corrected_traces_of_a_static_specimen_keep_only_shot_noise():
    # content moving by several pixels makes uncorrected ROI means swing; read at the estimated
    # shifts, a static cell's ROI mean fluctuates only by shot noise: SD sqrt(sum w^2 lambda) for
    # a weighted mean sum w x of Poisson pixels with means lambda (sum w = 1)
    rng = np.random.default_rng(10)
    shifts = _running_shifts(rng, 60, max_px=6.0)
    frames, clean, spec = _shot_noise_movie(rng, shifts, nu=2.0, active_fraction=0.0)
    margin = 16  # ROIs on the cells that stay inside the frame whatever the motion
    keep = np.all((spec["centre"] > margin) & (spec["centre"] < FRAME_PX - margin), axis=1)
    keep &= spec["radius"] > 4
    yy, xx = np.mgrid[:FRAME_PX, :FRAME_PX] + 0.5
    masks = np.stack(
        [
            np.hypot(yy - cy, xx - cx) <= 0.8 * r
            for (cy, cx), r in zip(spec["centre"][keep], spec["radius"][keep])
        ]
    )
    rois = RoiSet.from_masks(masks)
    assert rois.n_rois >= 5
    corrector = MotionCorrector(clean, max_shift_px=10)
    estimated, _, status = register_frames(frames, corrector)
    assert (status == OK).all()
    extraction = ShiftedExtraction(rois)
    raw = np.zeros((60, rois.n_rois), np.float32)
    corrected = np.zeros((60, rois.n_rois))
    for t in range(60):
        extract(frames[t], rois, raw[t])
        extraction.extract(frames[t], estimated[t], corrected[t])
    expected_mean = np.array([clean.ravel()[rois.roi_pixels(r)].mean() for r in range(rois.n_rois)])
    shot_sd = np.array([np.sqrt(np.sum(clean.ravel()[rois.roi_pixels(r)]))
                        / rois.roi_pixels(r).size for r in range(rois.n_rois)])  # fmt: skip
    np.testing.assert_allclose(corrected.mean(axis=0), expected_mean, rtol=0.1)
    corrected_ratio = np.median(corrected.std(axis=0) / shot_sd)
    raw_ratio = np.median(raw.std(axis=0) / shot_sd)
    assert corrected_ratio < 1.15  # shot noise only
    assert raw_ratio > 1.5 * corrected_ratio  # uncorrected: motion adds to it
