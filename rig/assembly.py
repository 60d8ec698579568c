"""Build a rig (devices and, for simulated rigs, the world) from a validated RigConfig.

Everything that can be checked is checked here, before any device is opened: scan settings
(plan_raster), stimulator limits, the world configuration.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.base import Device
from drivers.daq.contract import ScanDAQ
from drivers.roles import FocusDevice, Scanner, Stimulator
from drivers.scanning.galvo import GalvoGalvoScanner
from drivers.scanning.galvo_waveforms import GalvoScanSettings
from drivers.scanning.resonant import ResonantGalvoScanner, ResonantScanSettings
from drivers.stimulation.light import LightPathCalibration, LightStimulator, LightStimulatorLimits
from rig.config import ConfigError, RigConfig, world_config

log = logging.getLogger(__name__)


@dataclass
class Rig:
    """The devices of one session. `safe_all` and `close_all` never raise; they log."""

    config: RigConfig
    daq: ScanDAQ | None
    scanner: Scanner | None
    stimulator: Stimulator | None
    world: Any = None  # simulators.world.World for simulated rigs
    clock: Any = None
    devices: list[Device] = field(default_factory=list)
    spikes: Any = None  # drivers.mea.spikes.SpikeSource: spike blocks as the loop's input
    culture: Any = None  # simulators.culture.Culture (ground truth of simulated MEA rigs)
    servers: list[Any] = field(default_factory=list)  # simulated servers, closed last
    focus: FocusDevice | None = None  # [focus]: tunable lens or objective piezo (rig/focus.py)

    def open_all(self) -> None:
        for d in self.devices:
            d.open()

    def safe_all(self) -> list[str]:
        """Put every device in its safe state; return the problems met (empty if none)."""
        problems = []
        # stimulation off first, then scanners
        for d in sorted(self.devices, key=lambda d: d.role != "stimulator"):
            try:
                d.safe()
            except Exception as e:  # noqa: BLE001 - a failing device must not stop the others
                problems.append(f"{d.name}: safe() failed: {e!r}")
                log.exception("safe() failed for %s", d.name)
        return problems

    def close_all(self) -> list[str]:
        problems = []
        for d in reversed(self.devices):
            try:
                d.close()
            except Exception as e:  # noqa: BLE001
                problems.append(f"{d.name}: close() failed: {e!r}")
                log.exception("close() failed for %s", d.name)
        for server in self.servers:
            try:
                server.close()
            except Exception as e:  # noqa: BLE001
                problems.append(f"{type(server).__name__}: close() failed: {e!r}")
        self.servers.clear()
        return problems

    def snapshot(self) -> dict[str, Any]:
        return {d.name: d.snapshot() for d in self.devices}


def scan_settings(config: RigConfig) -> GalvoScanSettings:
    s = config.section("scanner")
    return GalvoScanSettings(
        fov_um=tuple(s["fov_um"]),
        zoom=s["zoom"],
        pixels_per_line=s["pixels_per_line"],
        lines=s["lines"],
        sample_rate_hz=s["sample_rate_hz"],
        ai_oversample=s["ai_oversample"],
        bidirectional=s["bidirectional"],
        turnaround_us=s["turnaround_us"],
        flyback_lines=s["flyback_lines"],
        line_phase_us=s["line_phase_us"],
        park_um=tuple(s["park_um"]),
        um_per_volt=tuple(s["um_per_volt"]),
        max_volts=s["max_volts"],
        max_ao_rate_hz=s["max_ao_rate_hz"],
    )


def resonant_settings(config: RigConfig) -> ResonantScanSettings:
    """Resonant scan settings; the line phase comes from resonant.line_phase_file (a per-zoom
    table, interpolated at scanner.zoom) when given, else from scanner.line_phase_us."""
    from analysis.line_phase import LinePhaseTable

    s, r = config.section("scanner"), config.section("resonant")
    line_phase_us = s["line_phase_us"]
    if r["line_phase_file"]:
        try:
            table = LinePhaseTable.from_dict(json.loads(Path(r["line_phase_file"]).read_text()))
            line_phase_us = table.phase_us_at(s["zoom"])
        except (OSError, ValueError) as e:
            raise ConfigError(f"resonant.line_phase_file: {e}") from e
    return ResonantScanSettings(
        resonant_hz=r["nominal_hz"],
        resonant_tolerance=r["tolerance"],
        fov_um=tuple(s["fov_um"]),
        zoom=s["zoom"],
        fill_fraction=r["fill_fraction"],
        pixels_per_line=s["pixels_per_line"],
        lines=s["lines"],
        bidirectional=s["bidirectional"],
        flyback_ms=r["flyback_ms"],
        sample_rate_hz=s["sample_rate_hz"],
        line_phase_us=line_phase_us,
        resonant_um_per_volt=r["um_per_volt"],
        max_amplitude_v=r["max_amplitude_v"],
        galvo_um_per_volt=r["galvo_um_per_volt"],
        max_galvo_volts=r["max_galvo_volts"],
        galvo_rate_hz=r["galvo_rate_hz"],
        galvo_lag_us=r["galvo_lag_us"],
        park_um=s["park_um"][1],
        measure_periods=r["measure_periods"],
    )


def resonant_scanner(config: RigConfig, world: Any, clock: Any, seed: int) -> ResonantGalvoScanner:
    """The resonant scanner on simulated hardware (sim back end) or on NI-DAQmx."""
    r = config.section("resonant")
    settings = resonant_settings(config)
    if config.simulated:
        from simulators.resonant import ResonantPhysics, SimulatedResonantHardware

        sim = config.section("sim")
        physics = ResonantPhysics(
            natural_hz=sim["resonant_natural_hz"],
            tempco_per_k=sim["resonant_tempco_per_k"],
            amplitude_shift_hz=sim["resonant_amplitude_shift_hz"],
            heating_k=sim["resonant_heating_k"],
            thermal_tau_s=sim["resonant_thermal_tau_s"],
            phase_lag_us=sim["resonant_lag_us"],
            phase_lag_amplitude_us=sim["resonant_lag_amplitude_us"],
            amplitude_um_per_volt=sim["resonant_um_per_volt"],
            full_amplitude_v=r["max_amplitude_v"],
            galvo_um_per_volt=sim["galvo_um_per_volt"][1],
            galvo_lag_s=sim["galvo_lag_us"] * 1e-6,
            laser_power_mw=sim["laser_power_mw"],
            pmt_counts_per_photon=sim["pmt_counts_per_photon"],
            pmt_gain_spread=sim["pmt_gain_spread"],
            pmt_offset_counts=sim["pmt_offset_counts"],
            read_noise_counts=sim["read_noise_counts"],
            sub_bin_max_um=sim["sub_bin_max_um"],
            block_s=sim["ai_block_ms"] * 1e-3,
        )
        hw = SimulatedResonantHardware(
            world, clock, physics, seed=seed, line_clock_terminal=r["line_clock_terminal"]
        )
        digitizer, io = hw.digitizer, hw.io
        scanner = ResonantGalvoScanner(
            digitizer,
            io,
            settings,
            pmt_channels=tuple(config["scanner.pmt_channels"]),
            ai_range_v=config["scanner.ai_range_v"],
        )
        scanner.sim_hardware = hw  # type: ignore[attr-defined]
        return scanner
    else:
        from drivers.daq.nidaqmx_resonant import NIDigitizer, NIResonantIO

        io = NIResonantIO(
            config["daq.device"],
            line_clock_terminal=r["line_clock_terminal"],
            line_counter=r["line_counter"],
            frame_counter=r["frame_counter"],
            amplitude_channel=r["amplitude_channel"],
            amplitude_range_v=r["max_amplitude_v"],
            slow_galvo_channel=r["slow_galvo_channel"],
            park_v=settings.park_um / settings.galvo_um_per_volt,
            timeout_s=config["daq.timeout_s"],
        )
        digitizer = NIDigitizer(
            config["daq.device"],
            trigger_terminal=r["line_clock_terminal"],
            ai_terminal=config["daq.ai_terminal"],
            timeout_s=config["daq.timeout_s"],
        )
    return ResonantGalvoScanner(
        digitizer,
        io,
        settings,
        pmt_channels=tuple(config["scanner.pmt_channels"]),
        ai_range_v=config["scanner.ai_range_v"],
    )


def stimulator_parts(config: RigConfig) -> tuple[LightStimulatorLimits, LightPathCalibration]:
    s = config.section("stimulator")
    # the photostimulation galvos reach +-range_v (10 V) x um_per_volt, whatever the imaging
    # zoom: cells near the edge of a zoomed-in field (or moved out of it) stay reachable
    range_v = LightPathCalibration().range_v
    field_um = tuple(2 * range_v * upv for upv in s["um_per_volt"])
    limits = LightStimulatorLimits(
        max_power_mw=s["max_power_mw"],
        max_pulse_ms=s["max_pulse_ms"],
        max_pulses=s["max_pulses"],
        max_pulse_rate_hz=s["max_pulse_rate_hz"],
        max_duty_cycle=s["max_duty_cycle"],
        max_train_s=s["max_train_s"],
        max_targets=s["max_targets"],
        max_mean_power_mw=s["max_mean_power_mw"],
        field_um=field_um,
    )
    calibration = LightPathCalibration(
        mw_per_volt=s["mw_per_volt"],
        um_per_volt=tuple(s["um_per_volt"]),
        output_rate_hz=s["output_rate_hz"],
    )
    return limits, calibration


def build_focus(config: RigConfig, world: Any = None, daq: Any = None) -> FocusDevice | None:
    """The focus device of [focus] (None for focus.kind = "none"), not opened. On a simulated
    rig with a lens, the lens runs on the world's clock and `focus.sim_follower` is what the
    simulated scan hardware calls (`focus_z_source`) to move the world's imaged plane."""
    from rig.focus import build_focus_device

    focus, follower = build_focus_device(config, world, daq)
    if world is not None and config["volume.planes_um"]:
        # a volume cycle visits its settled planes and those passed while settling
        planes = len(config["volume.planes_um"])
        world.max_cached_planes = max(world.max_cached_planes, 4 * planes + 8)
    if focus is not None:
        focus.sim_follower = follower  # type: ignore[attr-defined]
    return focus


def build_mea_rig(config: RigConfig, *, seed: int | None, speed: str) -> Rig:
    """An MEA rig: an Intan RHX (real, or the simulated server wired to a simulated culture)
    delivering spike blocks and stimulating through its stimulation controller."""
    from drivers.mea.intan_rhx import RHXClient, RHXStimulatorBackend
    from drivers.mea.rhx_spike_source import RHXSpikeSource
    from drivers.mea.stimulator import MEAStimulator

    m = config.section("mea")
    culture = None
    servers: list[Any] = []
    host, port, pace = m["host"], m["command_port"], None
    if config.simulated:
        from rig.config import culture_config
        from simulators.culture import Culture
        from simulators.rhx_server import RHXSimServer

        seed = config["sim.seed"] if seed is None else seed
        culture = Culture(culture_config(config), seed=seed)
        server = RHXSimServer(
            culture,
            sample_rate_hz=m["sample_rate_hz"],
            stim_step_ua=m["stim_step_ua"],
            speed=speed,
            host=host,
        ).start()
        servers.append(server)
        port = server.command_port
        pace = server.pace if speed == "max" else None
    client = RHXClient(host, port, timeout_s=m["timeout_s"], pace=pace)
    spikes = RHXSpikeSource(
        client,
        blocks_per_write=m["blocks_per_write"],
        stim_readback=m["stim_readback"],
        spike_threshold_uv=m["spike_threshold_uv"],
        sample_rate_hz=float(m["sample_rate_hz"]),
    )
    stimulator = None
    if config["stimulator.kind"] == "mea":
        backend = RHXStimulatorBackend(
            client,
            sample_rate_hz=float(m["sample_rate_hz"]),
            stim_step_ua=m["stim_step_ua"],
            max_charge_per_phase_nc=m["max_charge_per_phase_nc"],
            max_rate_hz=m["max_rate_hz"],
        )
        stimulator = MEAStimulator(backend)
    devices: list[Device] = [spikes] + ([stimulator] if stimulator else [])
    return Rig(
        config=config,
        daq=None,
        scanner=None,
        stimulator=stimulator,
        devices=devices,
        spikes=spikes,
        culture=culture,
        servers=servers,
    )


def build_rig(config: RigConfig, *, seed: int | None = None, speed: str = "max") -> Rig:
    """Create (not open) every device of the rig described by `config`."""
    if config["spikes.kind"] == "rhx":
        if config["scanner.kind"] != "none":
            raise ConfigError(
                'an MEA rig (spikes.kind = "rhx") images nothing yet: set scanner.kind = "none"'
            )
        return build_mea_rig(config, seed=seed, speed=speed)
    resonant = config["scanner.kind"] == "resonant"
    settings = None if resonant else scan_settings(config)
    world = clock = None
    if config.simulated:
        from simulators.clock import SimClock
        from simulators.daq import SimulatedDAQ, SimulatedOptics
        from simulators.world.world import World

        sim = config.section("sim")
        seed = sim["seed"] if seed is None else seed
        world = World(world_config(config), seed=seed)
        clock = SimClock(speed)
        optics = SimulatedOptics(
            galvo_um_per_volt=tuple(sim["galvo_um_per_volt"]),
            galvo_lag_s=sim["galvo_lag_us"] * 1e-6,
            laser_power_mw=sim["laser_power_mw"],
            pmt_counts_per_photon=sim["pmt_counts_per_photon"],
            pmt_gain_spread=sim["pmt_gain_spread"],
            pmt_offset_counts=sim["pmt_offset_counts"],
            read_noise_counts=sim["read_noise_counts"],
            stim_mw_per_volt=config["stimulator.mw_per_volt"],
            stim_um_per_volt=tuple(config["stimulator.um_per_volt"]),
            stim_spot_radius_um=sim["stim_spot_radius_um"],
            ai_block_s=sim["ai_block_ms"] * 1e-3,
        )
        daq: ScanDAQ = SimulatedDAQ(world, clock, optics, seed=seed)
    else:
        from drivers.daq.nidaqmx_backend import NIDAQ

        daq = NIDAQ(
            config["daq.device"],
            timeout_s=config["daq.timeout_s"],
            ai_terminal=config["daq.ai_terminal"],
        )
    scanner: Scanner
    if resonant:
        # the DAQ above still serves the stimulator and the focus piezo (on a real rig: a
        # second board, see docs/devices/resonant.md)
        scanner = resonant_scanner(
            config, world, clock, config["sim.seed"] if seed is None else seed
        )
        hw = getattr(scanner, "sim_hardware", None)
        if hw is not None and daq is not None:
            daq.scan_time_source = lambda: hw.scan_time_s  # stimulation on the scan clock
    else:
        scanner = GalvoGalvoScanner(
            daq,
            settings,
            galvo_channels=tuple(config["scanner.galvo_channels"]),
            pmt_channels=tuple(config["scanner.pmt_channels"]),
            ai_range_v=config["scanner.ai_range_v"],
        )
    stimulator = None
    if config["stimulator.kind"] == "light":
        limits, calibration = stimulator_parts(config)
        stimulator = LightStimulator(
            daq,
            channels=tuple(config["stimulator.channels"]),
            limits=limits,
            calibration=calibration,
        )
    focus = build_focus(config, world, daq)
    follower = getattr(focus, "sim_follower", None)
    if follower is not None:  # the world's imaged plane follows the simulated lens
        hw = getattr(scanner, "sim_hardware", None) if resonant else daq
        hw.focus_z_source = follower
    devices: list[Device] = [daq, scanner] + ([stimulator] if stimulator else [])
    if focus is not None:
        devices.append(focus)
    return Rig(
        config=config,
        daq=daq,
        scanner=scanner,
        stimulator=stimulator,
        world=world,
        clock=clock,
        devices=devices,
        focus=focus,
    )
