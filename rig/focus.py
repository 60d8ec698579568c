"""The focus of a rig: which device moves the imaged plane, its optics, and how it is watched.

[focus] in the rig file (rig/config.py) selects the device:

- "none": no focus device (the default; single-plane rigs stay exactly as they were).
- "piezo": an objective piezo on a static AO channel of the DAQ (drivers/focus/piezo.py);
  on a simulated rig the simulated DAQ moves the world's plane when the voltage is written.
- "optotune": an Optotune lens on a Lens Driver 4 (drivers/optotune/) for remote focusing.
  z of the imaged plane follows the lens's focal power P through the remote-focusing formula
  (science.md section 5, analysis.optics.remote_focus_shift):

      z = um_per_dpt (P - zero_dpt),  um_per_dpt = - f_obj^2 / M^2,  M = (f_t / f_s) prod(relays)

  or through a bead-stack calibration (focus.calibration_file, FocalPowerZCalibration),
  which overrides the optics. On a simulated rig the lens is `optotune_sim://`, made here
  on the world's clock, and the simulated scanner moves the world's plane to the z of the
  lens's TRUE focal power at the start of every acquisition block (`FocalPlaneFollower`), so
  frames taken while the lens settles sample intermediate planes. The simulated world's optics
  are the configured ones (no calibration error is simulated).

While a session runs, a `FocusMonitor` thread reads the lens (mode, current, focal power,
temperature) every focus.read_every_s into events.jsonl, off the acquisition and processing
threads. A lens that stops answering is handled as focus.on_fault says: "record" (the fault
is recorded, the session runs on without further lens commands) or "abort" (the session
aborts: every device safe, everything recorded so far kept).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from analysis.optics import FocalPowerZCalibration, remote_focus_shift
from drivers.roles import FocusDevice
from rig.config import ConfigError, RigConfig

log = logging.getLogger(__name__)

#: planes the simulated world renders for the lens are rounded to axial_psf_sigma_um / this:
#: 2 um / 4 = 0.5 um, an error of at most 1/8 of the axial PSF's SD (the world caches planes,
#: and a settling lens would otherwise ask for a new plane every acquisition block)
PLANE_QUANTA_PER_PSF_SIGMA = 4.0


@dataclass(frozen=True)
class FocusSettings:
    """The validated [focus] section."""

    kind: str
    port: str
    um_per_dpt: float
    zero_dpt: float
    calibration: FocalPowerZCalibration | None  # optotune: focal power <-> z the rig uses
    current_limit_ma: float
    full_scale_code: int
    timeout_s: float
    on_fault: str
    read_every_s: float
    piezo_channel: str
    piezo_um_per_volt: float
    piezo_zero_um: float
    travel_um: tuple[float, float]

    @property
    def z_range_um(self) -> tuple[float, float]:
        """The z the focus device can be commanded to."""
        if self.kind == "optotune":
            assert self.calibration is not None
            return self.calibration.z_range_um
        return self.travel_um

    def model_z_um(self, focal_power_dpt: float) -> float:
        """z of the optics model (what the simulated world images) for a focal power."""
        return self.um_per_dpt * (focal_power_dpt - self.zero_dpt)


def focus_settings(config: RigConfig) -> FocusSettings:
    """[focus] checked across keys; ConfigError naming the key and the fix."""
    f = config.section("focus")
    relays = f["relay_mm"]
    if len(relays) % 2:
        raise ConfigError(
            f"focus.relay_mm = {relays} must hold pairs (f_r1, f_r2, f_r3, f_r4, ...): each "
            "4f relay has two lenses"
        )
    pairs = [(relays[i], relays[i + 1]) for i in range(0, len(relays), 2)]
    um_per_dpt = remote_focus_shift(1.0, f["f_objective_mm"], f["f_scan_mm"], f["f_tube_mm"], pairs)
    lo, hi = f["focal_power_range_dpt"]
    if not lo < hi:
        raise ConfigError(f"focus.focal_power_range_dpt = {[lo, hi]} must be increasing")
    calibration = None
    if f["kind"] == "optotune":
        if f["calibration_file"]:
            try:
                calibration = FocalPowerZCalibration.load(Path(f["calibration_file"]))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"focus.calibration_file: {e}") from e
        else:
            calibration = FocalPowerZCalibration.linear(
                um_per_dpt, (lo, hi), z_at_zero_dpt_um=-um_per_dpt * f["zero_dpt"]
            )
        if config.simulated and not f["port"].lower().startswith("optotune_sim://"):
            raise ConfigError(
                f"focus.port = {f['port']!r}: a simulated rig's lens is the simulated one; "
                'use "optotune_sim://" (options after "?", e.g. "optotune_sim://?stop_after=50")'
            )
    travel = tuple(f["travel_um"])
    if f["kind"] == "piezo" and not travel[0] < travel[1]:
        raise ConfigError(f"focus.travel_um = {list(travel)} must be increasing")
    settings = FocusSettings(
        kind=f["kind"],
        port=f["port"],
        um_per_dpt=um_per_dpt,
        zero_dpt=f["zero_dpt"],
        calibration=calibration,
        current_limit_ma=f["current_limit_ma"],
        full_scale_code=f["full_scale_code"],
        timeout_s=f["timeout_s"],
        on_fault=f["on_fault"],
        read_every_s=f["read_every_s"],
        piezo_channel=f["piezo_channel"],
        piezo_um_per_volt=f["piezo_um_per_volt"],
        piezo_zero_um=f["piezo_zero_um"],
        travel_um=(float(travel[0]), float(travel[1])),
    )
    planes = config["volume.planes_um"]
    if planes:
        if settings.kind == "none":
            raise ConfigError(
                f"volume.planes_um = {planes} needs a focus device: set focus.kind = "
                '"optotune" (or "piezo")'
            )
        z_lo, z_hi = settings.z_range_um
        outside = [z for z in planes if not z_lo <= z <= z_hi]
        if outside:
            raise ConfigError(
                f"volume.planes_um: {outside} outside the focus range [{z_lo:g}, {z_hi:g}] um "
                "(optotune: focus.focal_power_range_dpt through the optics or calibration; "
                "piezo: focus.travel_um)"
            )
    _check_reference_zstack(config, settings)
    return settings


def _check_reference_zstack(config: RigConfig, settings: FocusSettings) -> None:
    """rois.zstack_range_um > 0 needs a focus device that reaches the whole stack, a single
    imaging plane and detected ROIs."""
    half_range = config["rois.zstack_range_um"]
    if half_range <= 0:
        return
    where = f"rois.zstack_range_um = {half_range:g}"
    if settings.kind == "none":
        raise ConfigError(
            f'{where} needs a focus device to step: set focus.kind = "optotune" (or "piezo"), '
            "or rois.zstack_range_um = 0"
        )
    if config["volume.planes_um"]:
        raise ConfigError(
            f"{where}: a reference z-stack is for single-plane imaging; volumetric imaging "
            "(volume.planes_um) detects ROIs per plane - set one of them to off"
        )
    if config["rois.source"] != "detect":
        raise ConfigError(
            f"{where}: the z-stack checks detected ROIs, but rois.source = "
            f'{config["rois.source"]!r}; set rois.source = "detect" or rois.zstack_range_um = 0'
        )
    if config["rois.zstack_step_um"] > half_range:
        raise ConfigError(
            f"rois.zstack_step_um = {config['rois.zstack_step_um']:g} is larger than {where}: "
            "the stack would hold only the imaging plane"
        )
    z_lo, z_hi = settings.z_range_um
    if not (z_lo <= -half_range and half_range <= z_hi):
        raise ConfigError(
            f"{where}: the stack [{-half_range:g}, {half_range:g}] um leaves the focus range "
            f"[{z_lo:g}, {z_hi:g}] um; use a smaller range"
        )


class WorldLensClock:
    """The simulated lens's time: the simulated world's virtual time (`World.t_s`, the end of
    the last simulated activity step). At max speed a lens command takes effect where the
    simulation stands, whatever the machine's load, so runs are deterministic; in realtime the
    world lags the wall clock by at most one acquisition block (sim.ai_block_ms), so a
    command takes effect up to that much early."""

    def __init__(self, world: Any) -> None:
        self.world = world

    def now_s(self) -> float:
        return float(self.world.t_s)


class FocalPlaneFollower:
    """`focus_z_source` of the simulated scan hardware: z of the world's imaged plane at a
    block's start time (world clock) from the simulated lens's true focal power (membrane
    dynamics, thermal drift) through the optics model, rounded to `quantum_um`."""

    def __init__(self, lens: Any, settings: FocusSettings, quantum_um: float) -> None:
        if not quantum_um > 0:
            raise ValueError(f"quantum_um = {quantum_um!r} must be > 0")
        self.lens = lens
        self.settings = settings
        self.quantum_um = float(quantum_um)

    def __call__(self, t_s: float) -> float:
        z = self.settings.model_z_um(self.lens.focal_power_dpt_at(t_s))
        return round(z / self.quantum_um) * self.quantum_um


def build_focus_device(
    config: RigConfig, world: Any = None, daq: Any = None
) -> tuple[FocusDevice | None, FocalPlaneFollower | None]:
    """The focus device of the config (not opened) and, for a simulated lens, the follower
    the simulated scan hardware calls to move the world's plane."""
    s = focus_settings(config)
    if s.kind == "none":
        return None, None
    if s.kind == "piezo":
        from drivers.focus.piezo import AnalogPiezo, PiezoCalibration

        if daq is None:
            raise ConfigError('focus.kind = "piezo" needs a DAQ (daq.backend) for its AO')
        calibration = PiezoCalibration(
            um_per_volt=s.piezo_um_per_volt,
            zero_um=s.piezo_zero_um,
            min_um=s.travel_um[0],
            max_um=s.travel_um[1],
            rest_um=min(max(0.0, s.travel_um[0]), s.travel_um[1]),
        )
        try:
            return AnalogPiezo(daq, s.piezo_channel, calibration), None
        except ValueError as e:  # LimitError: travel beyond the AO range
            raise ConfigError(f"[focus] piezo: {e}") from e
    from drivers.optotune import OptotuneLens

    limits = (-s.current_limit_ma, s.current_limit_ma) if s.current_limit_ma > 0 else None
    port = s.port
    follower = None
    if config.simulated:
        from simulators.optotune import lens_on_clock

        if world is None:
            raise ConfigError("a simulated lens needs the simulated world (daq.backend = sim)")
        try:
            sim_lens, port = lens_on_clock(s.port, WorldLensClock(world))
        except ValueError as e:
            raise ConfigError(f"focus.port: {e}") from e
        quantum = world.config.axial_psf_sigma_um / PLANE_QUANTA_PER_PSF_SIGMA
        follower = FocalPlaneFollower(sim_lens, s, quantum)
    elif port.lower().startswith("optotune_sim://"):
        import simulators.optotune  # noqa: F401  (registers the URL scheme; no world coupled)
    lens = OptotuneLens(
        port,
        s.calibration,
        timeout_s=s.timeout_s,
        full_scale_code=s.full_scale_code,
        current_limits_ma=limits,
    )
    if follower is not None:
        lens.sim_lens = follower.lens  # type: ignore[attr-defined]  (ground truth for tests)
    return lens, follower


def focus_readings(focus: FocusDevice) -> dict[str, Any]:
    """What the focus device reports now: the lens's mode, current, focal power and
    temperature (serial queries, a few ms), or a piezo's commanded position."""
    readings = getattr(focus, "readings", None)
    values: dict[str, Any] = dict(readings()) if callable(readings) else {}
    z = focus.position_um()
    values["position_um"] = z if math.isfinite(z) else None
    return values


class FocusFaults:
    """The fault policy (focus.on_fault), shared by the thread that steps the focus and the
    one that reads it: the first fault is recorded; "abort" then aborts the session."""

    def __init__(
        self,
        on_fault: str,
        post_event: Callable[[dict[str, Any]], None],
        abort: Callable[[BaseException, str], None],
    ) -> None:
        if on_fault not in ("record", "abort"):
            raise ValueError(f"on_fault = {on_fault!r}: choose 'record' or 'abort'")
        self.on_fault = on_fault
        self.post_event = post_event
        self.abort = abort
        self.faulted = threading.Event()
        self.error: str | None = None

    def handle(self, exc: BaseException, where: str) -> None:
        if self.faulted.is_set():
            return
        self.error = f"{where}: {type(exc).__name__}: {exc}"
        self.faulted.set()
        self.post_event(
            {
                "type": "focus",
                "event": "fault",
                "where": where,
                "error": self.error,
                "action": "session aborted"
                if self.on_fault == "abort"
                else "recorded; no further focus commands, session continues",
            }
        )
        if self.on_fault == "abort":
            self.abort(exc, f"focus ({where})")


def move_focus(focus: Any, z_um: float, faults: FocusFaults | None, where: str) -> bool:
    """Command the focus under focus.on_fault. False when the device has faulted, now (the
    fault is handed to ``faults``) or earlier, and the policy lets the session go on;
    without a policy (``faults`` None) the error propagates."""
    if faults is not None and faults.faulted.is_set():
        return False
    try:
        focus.move_to_um(z_um)
    except Exception as exc:  # noqa: BLE001 - handled by focus.on_fault
        if faults is None:
            raise
        faults.handle(exc, where)
        return False
    return True


class FocusMonitor:
    """Reads the focus device every `every_s` on its own thread and posts the readings as
    `{"type": "focus", "event": "readings", ...}` events. It never runs on the acquisition or
    processing thread, so a slow serial reply costs no frame; the lens's connection lock keeps
    its queries from interleaving with the plane steps."""

    def __init__(
        self,
        focus: FocusDevice,
        post_event: Callable[[dict[str, Any]], None],
        faults: FocusFaults,
        every_s: float,
        device_time: Callable[[], float] | None = None,
    ) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s = {every_s!r} must be > 0")
        self.focus = focus
        self.post_event = post_event
        self.faults = faults
        self.every_s = float(every_s)
        self.device_time = device_time
        self.readings_posted = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="looprig-focus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def read_once(self) -> bool:
        """One reading into the events; False (and the fault handled) if the device failed."""
        if self.faults.faulted.is_set():
            return False
        try:
            values = focus_readings(self.focus)
        except Exception as exc:  # noqa: BLE001 - a fault is handled by policy, never hidden
            if not self._stop.is_set():
                self.faults.handle(exc, "reading the lens")
            return False
        t = self.device_time() if self.device_time is not None else math.nan
        self.post_event(
            {
                "type": "focus",
                "event": "readings",
                "host_time_s": time.monotonic(),
                "device_time_s": t if math.isfinite(t) else None,
                **values,
            }
        )
        self.readings_posted += 1
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.read_once():
                return
            self._stop.wait(self.every_s)
