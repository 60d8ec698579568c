"""Optics of the point-scanning microscope (science.md section 5): the seed's numbers, the
closed formulas against ray-transfer matrices, Gaussian beams, and the focal power -> z
calibration."""

import math

import numpy as np
import pytest

from analysis.optics import (
    FocalPowerZCalibration,
    beam_radius_mm,
    bfa_beam_diameter,
    collimated_focus_mm,
    etl_to_bfp_magnification,
    fov_size,
    free_space,
    gaussian_q,
    objective_focal_length_mm,
    optical_scan_angle_deg,
    propagate_q,
    remote_focus_chain,
    remote_focus_shift,
    remote_focus_shift_abcd,
    system_matrix,
    thin_lens,
    waist_distance_mm,
)

RELAYS = ((50.0, 100.0), (100.0, 50.0))


# -- the seed's numbers -------------------------------------------------------------------------
def test_objective_focal_length_from_magnification_and_tube_lens():
    assert objective_focal_length_mm(16) == 12.5  # Nikon 200 mm
    assert objective_focal_length_mm(40) == 5.0
    assert objective_focal_length_mm(20, tube_lens_standard_mm=180.0) == 9.0  # Olympus


def test_field_of_view_26_deg_ratio_4_16x_is_about_1_5_mm():
    assert fov_size(26.0, f_scan_mm=50.0, f_tube_mm=200.0, f_objective_mm=12.5) == pytest.approx(
        1.5, abs=0.05
    )
    assert optical_scan_angle_deg(13.0) == 26.0  # a mirror turned 13 deg deflects 26 deg


def test_beam_at_the_back_aperture_5_mm_ratio_4_is_20_mm():
    assert bfa_beam_diameter(5.0, f_scan_mm=50.0, f_tube_mm=200.0) == pytest.approx(20.0)


def test_16x_to_40x_shrinks_200_um_of_remote_focus_range_to_32_um():
    # the focal power span that gives 200 um with the 16x
    per_dpt_16x = remote_focus_shift(1.0, 12.5, 50.0, 200.0, RELAYS)
    span_dpt = 200.0 / abs(per_dpt_16x)
    range_40x = abs(remote_focus_shift(span_dpt, 5.0, 50.0, 200.0, RELAYS))
    assert range_40x == pytest.approx(32.0)


def test_remote_focus_range_scales_with_relay_magnification_squared():
    base = remote_focus_shift(1.0, 12.5, 50.0, 200.0)
    doubled = remote_focus_shift(1.0, 12.5, 50.0, 200.0, ((50.0, 100.0),))  # M x 2
    assert doubled == pytest.approx(base / 4)
    assert etl_to_bfp_magnification(50.0, 200.0, RELAYS) == pytest.approx(4.0)


def test_a_converging_tunable_lens_pulls_the_focus_toward_the_objective():
    assert (
        remote_focus_shift(2.0, 12.5, 50.0, 200.0) < 0 < remote_focus_shift(-2.0, 12.5, 50.0, 200.0)
    )


# -- closed formula = ABCD ------------------------------------------------------------------------
@pytest.mark.parametrize("relays", [(), ((50.0, 100.0),), RELAYS, ((75.0, 75.0), (30.0, 90.0))])
@pytest.mark.parametrize("power_dpt", [-8.0, -0.5, 0.25, 3.0, 12.0])
def test_closed_formula_equals_the_abcd_computation_in_the_conjugate_configuration(
    relays, power_dpt
):
    closed = remote_focus_shift(power_dpt, 12.5, 50.0, 200.0, relays)
    traced = remote_focus_shift_abcd(power_dpt, 12.5, 50.0, 200.0, relays)
    assert traced == pytest.approx(closed, rel=1e-9)


@pytest.mark.parametrize("waist_mm", [2.5, 0.5, 0.05, 0.01])
def test_gaussian_waist_shift_equals_the_formula_for_any_beam_in_the_conjugate_plane(waist_mm):
    """With the beam's waist on a lens conjugate to the objective's front focal plane, the
    output waist moves by exactly f_obj^2 Re(1/q) = -f_obj^2 P / M^2, whatever the beam size."""
    closed = remote_focus_shift(5.0, 12.5, 50.0, 200.0, RELAYS)
    gaussian = remote_focus_shift_abcd(
        5.0, 12.5, 50.0, 200.0, RELAYS, beam_waist_radius_mm=waist_mm, wavelength_nm=920.0
    )
    assert gaussian == pytest.approx(closed, rel=1e-6)


def test_off_the_conjugate_plane_the_shift_is_no_longer_the_formula():
    """A lens d before the conjugate plane acts there with vergence P / (1 - d P)."""
    d_mm, power = 30.0, 5.0
    traced = remote_focus_shift_abcd(power, 12.5, 50.0, 200.0, RELAYS, etl_offset_mm=d_mm)
    effective = power / (1.0 - d_mm * power / 1000.0)
    assert traced == pytest.approx(
        remote_focus_shift(effective, 12.5, 50.0, 200.0, RELAYS), rel=1e-9
    )
    assert abs(traced) > abs(remote_focus_shift(power, 12.5, 50.0, 200.0, RELAYS)) * 1.1


def test_off_conjugate_gaussian_focus_needs_a_large_beam_to_match_geometry():
    geometric = remote_focus_shift_abcd(5.0, 12.5, 50.0, 200.0, RELAYS, etl_offset_mm=30.0)
    big = remote_focus_shift_abcd(
        5.0, 12.5, 50.0, 200.0, RELAYS, etl_offset_mm=30.0, beam_waist_radius_mm=2.5
    )
    tiny = remote_focus_shift_abcd(
        5.0, 12.5, 50.0, 200.0, RELAYS, etl_offset_mm=30.0, beam_waist_radius_mm=0.01
    )
    assert big == pytest.approx(geometric, rel=1e-4)
    assert abs(tiny - geometric) > 0.5 * abs(geometric)  # diffraction dominates


# -- ABCD and Gaussian beam basics -------------------------------------------------------------
def test_thin_lens_imaging_condition_gives_b_equal_zero():
    s, f = 300.0, 100.0
    s_image = 1.0 / (1.0 / f - 1.0 / s)  # 1/s + 1/s' = 1/f
    m = system_matrix([free_space(s), thin_lens(f), free_space(s_image)])
    assert m[0, 1] == pytest.approx(0.0, abs=1e-9)
    assert m[0, 0] == pytest.approx(-s_image / s)  # lateral magnification
    assert np.linalg.det(m) == pytest.approx(1.0)


def test_collimated_light_focuses_at_the_focal_length():
    assert collimated_focus_mm(thin_lens(80.0)) == pytest.approx(80.0)
    chain = remote_focus_chain(0.0, 12.5, 50.0, 200.0, RELAYS)
    assert collimated_focus_mm(system_matrix(chain)) == pytest.approx(12.5)


def test_gaussian_beam_widens_by_root_two_at_one_rayleigh_range():
    w0, wavelength = 0.5, 1000.0
    q0 = gaussian_q(w0, wavelength)
    z_r = q0.imag
    assert z_r == pytest.approx(math.pi * w0**2 / (wavelength * 1e-6))
    assert beam_radius_mm(propagate_q(q0, free_space(z_r)), wavelength) == pytest.approx(
        w0 * math.sqrt(2)
    )
    assert waist_distance_mm(gaussian_q(w0, wavelength, distance_from_waist_mm=-7.0)) == 7.0


def test_bad_optics_input_names_the_parameter():
    with pytest.raises(ValueError, match="optical_scan_angle_deg"):
        fov_size(0.0, 50.0, 200.0, 12.5)
    with pytest.raises(ValueError, match="f_scan_mm"):
        bfa_beam_diameter(5.0, -50.0, 200.0)
    with pytest.raises(ValueError, match=r"relay_focal_lengths_mm\[0\]"):
        remote_focus_shift(1.0, 12.5, 50.0, 200.0, ((50.0,),))
    with pytest.raises(ValueError, match="afocal"):
        collimated_focus_mm(system_matrix([thin_lens(50.0), free_space(100.0), thin_lens(50.0)]))


# -- calibration -------------------------------------------------------------------------------
def bead_stack(powers, offset_mm=0.0):
    return [
        remote_focus_shift_abcd(p, 12.5, 50.0, 200.0, RELAYS, etl_offset_mm=offset_mm)
        for p in powers
    ]


def test_a_linear_fit_of_a_conjugate_bead_stack_recovers_the_optics():
    powers = np.linspace(-5, 5, 11)
    cal = FocalPowerZCalibration.fit(powers, bead_stack(powers))
    assert cal.coefficients_um[1] == pytest.approx(-(12.5**2) / 4.0**2)
    assert cal.coefficients_um[0] == pytest.approx(0.0, abs=1e-9)
    assert cal.residual_rms_um < 1e-9 and cal.n_points == 11
    assert cal.focal_power_dpt(cal.z_um(2.2)) == pytest.approx(2.2)


def test_an_off_conjugate_stack_needs_a_curved_fit_and_inverts_uniquely():
    powers = np.linspace(-5, 5, 21)
    z = bead_stack(powers, offset_mm=30.0)
    linear = FocalPowerZCalibration.fit(powers, z, degree=1)
    cubic = FocalPowerZCalibration.fit(powers, z, degree=3)
    assert cubic.residual_rms_um < linear.residual_rms_um / 10
    for p in (-4.5, -1.0, 0.3, 4.9):
        assert cubic.focal_power_dpt(cubic.z_um(p)) == pytest.approx(p, abs=1e-9)
    lo, hi = cubic.z_range_um
    assert lo == pytest.approx(min(cubic.z_um(-5), cubic.z_um(5)))
    assert hi == pytest.approx(max(cubic.z_um(-5), cubic.z_um(5)))


def test_calibration_refuses_what_it_cannot_answer():
    cal = FocalPowerZCalibration.linear(-10.0, (-5.0, 5.0))
    with pytest.raises(ValueError, match=r"z_um = 60 is outside the calibrated range"):
        cal.focal_power_dpt(60.0)
    with pytest.raises(ValueError, match="focal_power_dpt = 6"):
        cal.z_um(6.0)
    with pytest.raises(ValueError, match="not monotonic"):
        FocalPowerZCalibration((0.0, 0.0, 1.0), (-1.0, 1.0))  # z = P^2
    with pytest.raises(ValueError, match="at least 3 distinct"):
        FocalPowerZCalibration.fit([0.0, 1.0], [0.0, 1.0], degree=2)
    with pytest.raises(ValueError, match="same length"):
        FocalPowerZCalibration.fit([0.0, 1.0, 2.0], [0.0, 1.0])


def test_calibration_file_round_trip(tmp_path):
    powers = np.linspace(-3, 3, 7)
    cal = FocalPowerZCalibration.fit(powers, bead_stack(powers, offset_mm=30.0), degree=2)
    path = cal.save(tmp_path / "lens_z.json")
    assert FocalPowerZCalibration.load(path) == cal
    with pytest.raises(FileExistsError):
        cal.save(path)  # a calibration is never overwritten
    (tmp_path / "other.json").write_text('{"kind": "something else"}')
    with pytest.raises(ValueError, match="not a focal power -> z calibration"):
        FocalPowerZCalibration.load(tmp_path / "other.json")
