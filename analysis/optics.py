"""Optics of a point-scanning microscope with remote focusing (science.md section 5).

Closed formulas from "simple geometrical optics" (the blog seed):

    beam at the objective back aperture   d_BFA = (f_tube / f_scan) d_mirror
    field of view                         s_FOV = tan(alpha) f_obj f_scan / f_tube
                                          (alpha: OPTICAL scan angle, twice the mechanical)
    remote focusing (tunable lens in a plane conjugate to the back focal plane, relays
    r1..r4 between them)                  z = - f_obj^2 f_s^2 f_r1^2 f_r3^2
                                              / (f_ETL f_t^2 f_r2^2 f_r4^2)

and the general tool behind them: paraxial ray-transfer (ABCD) matrices, thin lens
[[1, 0], [-1/f, 1]] and free space [[1, d], [0, 1]], and the complex Gaussian beam parameter
q, q' = (A q + B) / (C q + D), whose waist is where Re(q) = 0.

The remote-focus formula is exact in paraxial optics: the relays image the tunable lens onto
the back focal plane with lateral magnification M = (f_t / f_s) prod(f_second / f_first), so
it acts there as a lens of focal length M^2 f_ETL, and a lens of power P in the front focal
plane of the objective moves its focus by -f_obj^2 P (Newton's equation). The ABCD functions
compute the same through any chain, including a tunable lens off the conjugate plane.

Lengths of the optics are in mm, focal powers in dpt (1/m), focus shifts in um, angles in deg.
A focus shift is positive away from the objective (deeper into the specimen).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NIKON_TUBE_LENS_MM = 200.0  # also Leica, Zeiss (165 mm for older Zeiss) and most others
OLYMPUS_TUBE_LENS_MM = 180.0


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} = {value!r} must be a finite number > 0")
    return float(value)


def _finite(name: str, value: float) -> float:
    if not (isinstance(value, (int, float, np.floating)) and math.isfinite(value)):
        raise ValueError(f"{name} = {value!r} must be a finite number")
    return float(value)


# -- closed formulas ----------------------------------------------------------------------------
def objective_focal_length_mm(
    magnification: float, tube_lens_standard_mm: float = NIKON_TUBE_LENS_MM
) -> float:
    """f_obj = tube-lens standard / magnification (16x Nikon: 200 / 16 = 12.5 mm)."""
    return _positive("tube_lens_standard_mm", tube_lens_standard_mm) / _positive(
        "magnification", magnification
    )


def optical_scan_angle_deg(mechanical_scan_angle_deg: float) -> float:
    """A mirror turned by theta deflects the beam by 2 theta."""
    return 2.0 * _finite("mechanical_scan_angle_deg", mechanical_scan_angle_deg)


def fov_size(
    optical_scan_angle_deg: float, f_scan_mm: float, f_tube_mm: float, f_objective_mm: float
) -> float:
    """Field of view in mm: tan(alpha) f_obj f_scan / f_tube, alpha the OPTICAL scan angle
    (26 deg, f_t/f_s = 4, 12.5 mm objective -> 1.52 mm)."""
    alpha = _finite("optical_scan_angle_deg", optical_scan_angle_deg)
    if not 0 < alpha < 90:
        raise ValueError(
            f"optical_scan_angle_deg = {alpha!r} must be in (0, 90) deg (the "
            "optical angle is twice the mirror's mechanical angle)"
        )
    return (
        math.tan(math.radians(alpha))
        * _positive("f_objective_mm", f_objective_mm)
        * _positive("f_scan_mm", f_scan_mm)
        / _positive("f_tube_mm", f_tube_mm)
    )


def bfa_beam_diameter(mirror_beam_diameter_mm: float, f_scan_mm: float, f_tube_mm: float) -> float:
    """Beam diameter at the objective back aperture in mm: (f_tube / f_scan) d_mirror
    (5 mm at the mirror, f_t/f_s = 4 -> 20 mm)."""
    return (
        _positive("mirror_beam_diameter_mm", mirror_beam_diameter_mm)
        * _positive("f_tube_mm", f_tube_mm)
        / _positive("f_scan_mm", f_scan_mm)
    )


def _relay_pairs(
    relay_focal_lengths_mm: Sequence[tuple[float, float]],
) -> list[tuple[float, float]]:
    pairs = []
    for i, pair in enumerate(relay_focal_lengths_mm):
        if len(pair) != 2:
            raise ValueError(
                f"relay_focal_lengths_mm[{i}] = {pair!r} must be a pair "
                "(f_first_mm, f_second_mm) of a 4f relay"
            )
        pairs.append(
            (
                _positive(f"relay_focal_lengths_mm[{i}][0]", pair[0]),
                _positive(f"relay_focal_lengths_mm[{i}][1]", pair[1]),
            )
        )
    return pairs


def etl_to_bfp_magnification(
    f_scan_mm: float, f_tube_mm: float, relay_focal_lengths_mm: Sequence[tuple[float, float]] = ()
) -> float:
    """|lateral magnification| from the tunable lens to the back focal plane:
    (f_t / f_s) prod(f_second / f_first) over the relays."""
    m = _positive("f_tube_mm", f_tube_mm) / _positive("f_scan_mm", f_scan_mm)
    for first, second in _relay_pairs(relay_focal_lengths_mm):
        m *= second / first
    return m


def remote_focus_shift(
    etl_focal_power_dpt: float,
    f_objective_mm: float,
    f_scan_mm: float,
    f_tube_mm: float,
    relay_focal_lengths_mm: Sequence[tuple[float, float]] = (),
) -> float:
    """Focus shift in um for a tunable lens of power P in a plane conjugate to the back focal
    plane: z = - f_obj^2 P / M^2, M = etl_to_bfp_magnification (science.md section 5).

    relay_focal_lengths_mm: the 4f relays from the tunable lens to the scan mirror, in the
    order the beam meets them, as (f_first, f_second) pairs: ((f_r1, f_r2), (f_r3, f_r4)).
    (mm^2 x dpt = mm^2 / m = um, so the result is in um without further factors.)
    """
    power = _finite("etl_focal_power_dpt", etl_focal_power_dpt)
    f_obj = _positive("f_objective_mm", f_objective_mm)
    m = etl_to_bfp_magnification(f_scan_mm, f_tube_mm, relay_focal_lengths_mm)
    return -(f_obj**2) * power / m**2


# -- ABCD matrices --------------------------------------------------------------------------
def thin_lens(focal_length_mm: float) -> np.ndarray:
    """[[1, 0], [-1/f, 1]]."""
    f = _finite("focal_length_mm", focal_length_mm)
    if f == 0:
        raise ValueError("focal_length_mm = 0 is not a lens (use lens_of_power for 0 dpt)")
    return np.array([[1.0, 0.0], [-1.0 / f, 1.0]])


def lens_of_power(power_dpt: float) -> np.ndarray:
    """Thin lens by its power (0 dpt allowed): [[1, 0], [-P, 1]] with P in 1/mm."""
    return np.array([[1.0, 0.0], [-_finite("power_dpt", power_dpt) / 1000.0, 1.0]])


def free_space(distance_mm: float) -> np.ndarray:
    """[[1, d], [0, 1]] (a negative d steps back, as in unfolded virtual paths)."""
    return np.array([[1.0, _finite("distance_mm", distance_mm)], [0.0, 1.0]])


def system_matrix(elements: Sequence[np.ndarray]) -> np.ndarray:
    """The matrix of a chain given in the order the light meets the elements."""
    m = np.eye(2)
    for i, element in enumerate(elements):
        e = np.asarray(element, dtype=np.float64)
        if e.shape != (2, 2):
            raise ValueError(f"elements[{i}] has shape {e.shape}; ABCD matrices are 2 x 2")
        m = e @ m
    return m


def collimated_focus_mm(matrix: np.ndarray) -> float:
    """Where a ray entering parallel to the axis crosses it after the chain: -A / C (mm)."""
    a, c = float(matrix[0, 0]), float(matrix[1, 0])
    if c == 0:
        raise ValueError("the chain is afocal (C = 0): a collimated beam leaves it collimated")
    return -a / c


def gaussian_q(
    waist_radius_mm: float, wavelength_nm: float, distance_from_waist_mm: float = 0.0
) -> complex:
    """q = z + i z_R with the Rayleigh range z_R = pi w0^2 / lambda (mm)."""
    w0 = _positive("waist_radius_mm", waist_radius_mm)
    wavelength_mm = _positive("wavelength_nm", wavelength_nm) * 1e-6
    return complex(
        _finite("distance_from_waist_mm", distance_from_waist_mm), math.pi * w0 * w0 / wavelength_mm
    )


def propagate_q(q: complex, matrix: np.ndarray) -> complex:
    """q' = (A q + B) / (C q + D)."""
    (a, b), (c, d) = np.asarray(matrix, dtype=np.float64)
    return (a * q + b) / (c * q + d)


def beam_radius_mm(q: complex, wavelength_nm: float) -> float:
    """1/e^2 radius from 1/q = 1/R - i lambda / (pi w^2)."""
    inv = 1.0 / q
    wavelength_mm = _positive("wavelength_nm", wavelength_nm) * 1e-6
    return math.sqrt(-wavelength_mm / (math.pi * inv.imag))


def waist_distance_mm(q: complex) -> float:
    """Distance ahead to the beam's waist (where Re(q) = 0): -Re(q)."""
    return -q.real


def remote_focus_chain(
    etl_focal_power_dpt: float,
    f_objective_mm: float,
    f_scan_mm: float,
    f_tube_mm: float,
    relay_focal_lengths_mm: Sequence[tuple[float, float]] = (),
    etl_offset_mm: float = 0.0,
) -> list[np.ndarray]:
    """ABCD elements from the tunable lens to just after the objective: the lens, then
    etl_offset_mm to the plane conjugate to the back focal plane (0: in it), the 4f relays,
    scan lens and tube lens as a 4f relay to the back focal plane, f_obj to the objective."""
    chain = [lens_of_power(etl_focal_power_dpt), free_space(etl_offset_mm)]
    relays = _relay_pairs(relay_focal_lengths_mm) + [
        (_positive("f_scan_mm", f_scan_mm), _positive("f_tube_mm", f_tube_mm))
    ]
    for first, second in relays:
        chain += [
            free_space(first),
            thin_lens(first),
            free_space(first + second),
            thin_lens(second),
            free_space(second),
        ]
    f_obj = _positive("f_objective_mm", f_objective_mm)
    chain += [free_space(f_obj), thin_lens(f_obj)]
    return chain


def remote_focus_shift_abcd(
    etl_focal_power_dpt: float,
    f_objective_mm: float,
    f_scan_mm: float,
    f_tube_mm: float,
    relay_focal_lengths_mm: Sequence[tuple[float, float]] = (),
    etl_offset_mm: float = 0.0,
    beam_waist_radius_mm: float | None = None,
    wavelength_nm: float = 920.0,
) -> float:
    """Focus shift in um computed through the lens chain (remote_focus_chain): the
    geometric focus of a collimated beam (-A/C) or, with beam_waist_radius_mm, the waist of a
    Gaussian beam whose waist sits on the tunable lens; minus the same at 0 dpt."""

    def focus_mm(power: float) -> float:
        chain = remote_focus_chain(
            power, f_objective_mm, f_scan_mm, f_tube_mm, relay_focal_lengths_mm, etl_offset_mm
        )
        m = system_matrix(chain)
        if beam_waist_radius_mm is None:
            return collimated_focus_mm(m)
        return waist_distance_mm(propagate_q(gaussian_q(beam_waist_radius_mm, wavelength_nm), m))

    power = _finite("etl_focal_power_dpt", etl_focal_power_dpt)
    return (focus_mm(power) - focus_mm(0.0)) * 1000.0


# -- calibration focal power -> z ------------------------------------------------------------------
CALIBRATION_KIND = "looprig focal power -> z calibration"


@dataclass(frozen=True)
class FocalPowerZCalibration:
    """z of the imaged plane (um) as a polynomial in the lens's focal power (dpt), fitted
    from a bead stack and valid only over the focal powers it was fitted on.

    A lab steps the lens through focal powers, refocuses on a bead with the objective piezo
    at each, and fits the (dpt, z) pairs: `FocalPowerZCalibration.fit(dpt, z_um)`. Degree 1 is
    the conjugate configuration (z linear in P); higher degrees follow a lens off the
    conjugate plane. The polynomial must be monotonic over its range, so z -> dpt is unique.
    """

    coefficients_um: tuple[float, ...]  # z = c0 + c1 P + c2 P^2 + ...
    focal_power_range_dpt: tuple[float, float]
    residual_rms_um: float = 0.0
    n_points: int = 0

    def __post_init__(self) -> None:
        coefficients = tuple(
            _finite(f"coefficients_um[{i}]", c) for i, c in enumerate(self.coefficients_um)
        )
        if len(coefficients) < 2:
            raise ValueError("coefficients_um needs at least (c0, c1): z = c0 + c1 P")
        object.__setattr__(self, "coefficients_um", coefficients)
        lo, hi = (
            _finite("focal_power_range_dpt[0]", self.focal_power_range_dpt[0]),
            _finite("focal_power_range_dpt[1]", self.focal_power_range_dpt[1]),
        )
        if not lo < hi:
            raise ValueError(f"focal_power_range_dpt = ({lo:g}, {hi:g}) must be increasing")
        object.__setattr__(self, "focal_power_range_dpt", (lo, hi))
        grid = np.linspace(lo, hi, 2001)
        slope = np.polynomial.polynomial.polyval(
            grid, np.polynomial.polynomial.polyder(coefficients)
        )
        if not (np.all(slope > 0) or np.all(slope < 0)):
            raise ValueError(
                f"z(P) with coefficients {coefficients} is not monotonic over "
                f"[{lo:g}, {hi:g}] dpt, so a z would need two focal powers: fit a lower degree "
                "or a narrower focal power range"
            )

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def fit(
        cls, focal_power_dpt: Sequence[float], z_um: Sequence[float], degree: int = 1
    ) -> FocalPowerZCalibration:
        """Least-squares polynomial z(P) through bead-stack pairs (dpt, um)."""
        p = np.asarray(focal_power_dpt, dtype=np.float64)
        z = np.asarray(z_um, dtype=np.float64)
        if p.ndim != 1 or z.shape != p.shape:
            raise ValueError(
                f"focal_power_dpt {p.shape} and z_um {z.shape} must be 1-D and of the same length"
            )
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(z))):
            raise ValueError("focal_power_dpt and z_um must be finite")
        if degree not in (1, 2, 3):
            raise ValueError(f"degree = {degree!r}: choose 1 (conjugate lens), 2 or 3")
        if np.unique(p).size < degree + 1:
            raise ValueError(
                f"a degree {degree} fit needs at least {degree + 1} distinct focal "
                f"powers, got {np.unique(p).size}"
            )
        coefficients = np.polynomial.polynomial.polyfit(p, z, degree)
        residual = z - np.polynomial.polynomial.polyval(p, coefficients)
        return cls(
            tuple(float(c) for c in coefficients),
            (float(p.min()), float(p.max())),
            residual_rms_um=float(np.sqrt(np.mean(residual**2))),
            n_points=int(p.size),
        )

    @classmethod
    def linear(
        cls,
        um_per_dpt: float,
        focal_power_range_dpt: tuple[float, float],
        z_at_zero_dpt_um: float = 0.0,
    ) -> FocalPowerZCalibration:
        """z = z0 + um_per_dpt P (for example um_per_dpt = remote_focus_shift(1.0, ...))."""
        return cls(
            (_finite("z_at_zero_dpt_um", z_at_zero_dpt_um), _finite("um_per_dpt", um_per_dpt)),
            tuple(focal_power_range_dpt),
        )

    # -- use ---------------------------------------------------------------------------------------
    @property
    def z_range_um(self) -> tuple[float, float]:
        a, b = (self.z_um(p) for p in self.focal_power_range_dpt)
        return (min(a, b), max(a, b))

    def z_um(self, focal_power_dpt: float) -> float:
        lo, hi = self.focal_power_range_dpt
        p = _finite("focal_power_dpt", focal_power_dpt)
        if not lo <= p <= hi:
            raise ValueError(
                f"focal_power_dpt = {p:g} is outside the calibrated range [{lo:g}, {hi:g}] dpt"
            )
        return float(np.polynomial.polynomial.polyval(p, self.coefficients_um))

    def focal_power_dpt(self, z_um: float) -> float:
        """The focal power that images z (the inverse; unique because z(P) is monotonic)."""
        z = _finite("z_um", z_um)
        z_lo, z_hi = self.z_range_um
        if not z_lo <= z <= z_hi:
            raise ValueError(
                f"z_um = {z:g} is outside the calibrated range [{z_lo:g}, {z_hi:g}] um"
            )
        c = self.coefficients_um
        if len(c) == 2 or all(x == 0 for x in c[2:]):
            return (z - c[0]) / c[1]
        lo, hi = self.focal_power_range_dpt
        f_lo = self.z_um(lo) - z
        for _ in range(200):  # bisection on a monotonic polynomial
            mid = 0.5 * (lo + hi)
            f_mid = float(np.polynomial.polynomial.polyval(mid, c)) - z
            if (f_mid > 0) == (f_lo > 0):
                lo, f_lo = mid, f_mid
            else:
                hi = mid
            if hi - lo <= 1e-12 * max(1.0, abs(mid)):
                break
        return 0.5 * (lo + hi)

    # -- a small file ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": CALIBRATION_KIND,
            "version": 1,
            "coefficients_um": list(self.coefficients_um),
            "focal_power_range_dpt": list(self.focal_power_range_dpt),
            "residual_rms_um": self.residual_rms_um,
            "n_points": self.n_points,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FocalPowerZCalibration:
        if data.get("kind") != CALIBRATION_KIND:
            raise ValueError(
                f"not a focal power -> z calibration (kind = {data.get('kind')!r},"
                f" expected {CALIBRATION_KIND!r})"
            )
        return cls(
            tuple(data["coefficients_um"]),
            tuple(data["focal_power_range_dpt"]),
            residual_rms_um=float(data.get("residual_rms_um", 0.0)),
            n_points=int(data.get("n_points", 0)),
        )

    def save(self, path: str | Path) -> Path:
        """Write as a small JSON file (refuses to overwrite)."""
        path = Path(path)
        with open(path, "x") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> FocalPowerZCalibration:
        with open(path) as f:
            return cls.from_dict(json.load(f))
