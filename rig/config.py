"""Rig configuration: one TOML file names every setting; every key has a type, unit and range.

A rig file has sections (`[scanner]`, `[daq]`, ...). Keys not set in the file take the
defaults below. Unknown keys, wrong types and out-of-range values are refused when the file
is loaded, before any device is touched, with a message naming the key and what is allowed.
`--set section.key=value` on the command line is validated the same way. The `[world]`
section (simulated rigs only) is validated by simulators.world.config.WorldConfig.

The embedded default rig is `sim` (rig/rigs/sim.toml): a simulated galvo-galvo two-photon
rig with a light stimulator. A real rig is a TOML file with `daq.backend = "nidaqmx"`
(see docs/rigs/ni-galvo-example.toml).
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A rig configuration or protocol parameter is invalid; the message says how to fix it."""


@dataclass(frozen=True)
class Key:
    default: Any
    kind: str  # float, int, bool, str, float2, floats, strs
    unit: str = ""
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""


SCHEMA: dict[str, Key] = {
    "rig.name": Key("sim", "str", help="name recorded in sessions"),
    "rig.description": Key("", "str"),
    # acquisition hardware
    "daq.backend": Key(
        "sim", "str", choices=("sim", "nidaqmx"), help="sim = simulated DAQ and world"
    ),
    "daq.device": Key("Dev1", "str", help="NI device name (nidaqmx back end)"),
    "daq.timeout_s": Key(2.0, "float", "s", 0.01, 60.0, help="read timeout"),
    "daq.ai_terminal": Key("DIFF", "str", choices=("DIFF", "RSE", "NRSE")),
    # galvo-galvo scanner
    "scanner.kind": Key(
        "galvo", "str", choices=("galvo", "resonant", "none"), help="resonant: see [resonant]"
    ),
    "scanner.fov_um": Key(
        [300.0, 300.0], "float2", "um", 1.0, 5000.0, help="(x, y) field at zoom 1"
    ),
    "scanner.zoom": Key(1.0, "float", "", 0.1, 100.0),
    "scanner.pixels_per_line": Key(256, "int", "px", 2, 8192),
    "scanner.lines": Key(256, "int", "lines", 1, 8192),
    "scanner.sample_rate_hz": Key(
        2.0e6, "float", "Hz", 1e3, 5e9, help="PMT sample rate (galvo: AI; resonant: digitizer)"
    ),
    "scanner.ai_oversample": Key(4, "int", "samples/px", 1, 1024),
    "scanner.bidirectional": Key(True, "bool"),
    "scanner.turnaround_us": Key(400.0, "float", "us", 0.0, 1e5),
    "scanner.flyback_lines": Key(2, "int", "lines", 1, 1000),
    "scanner.line_phase_us": Key(
        50.0,
        "float",
        "us",
        -50.0,
        1e5,
        help="galvo: pixel map delay (galvo lag); resonant: mirror lag behind the line clock",
    ),
    "scanner.park_um": Key([0.0, 0.0], "float2", "um", -1e4, 1e4),
    "scanner.um_per_volt": Key([30.0, 30.0], "float2", "um/V", 1e-3, 1e4),
    "scanner.max_volts": Key(10.0, "float", "V", 0.1, 10.0),
    "scanner.max_ao_rate_hz": Key(1.0e6, "float", "Hz", 1e3, 1e7),
    "scanner.galvo_channels": Key(["ao0", "ao1"], "strs"),
    "scanner.pmt_channels": Key(["ai0"], "strs"),
    "scanner.ai_range_v": Key(1.0, "float", "V", 0.05, 10.0),
    # resonant-galvo scanner (scanner.kind = "resonant"; it also uses scanner.fov_um, zoom,
    # pixels_per_line, lines, bidirectional, sample_rate_hz, line_phase_us, park_um[1],
    # pmt_channels and ai_range_v)
    "resonant.nominal_hz": Key(
        7910.0, "float", "Hz", 100.0, 100000.0, help="datasheet frequency; measured at start"
    ),
    "resonant.tolerance": Key(
        0.01, "float", "", 1e-4, 0.19, help="measured frequency within nominal_hz x (1 +- this)"
    ),
    "resonant.fill_fraction": Key(
        0.9, "float", "", 0.01, 0.99, help="spatial Fs; temporal Ft = (2/pi) asin(Fs)"
    ),
    "resonant.flyback_ms": Key(1.0, "float", "ms", 0.0, 1000.0, help="rounded up to lines"),
    "resonant.um_per_volt": Key(
        62.5, "float", "um/V", 1e-3, 1e5, help="mirror amplitude (centre to turnaround) per V"
    ),
    "resonant.max_amplitude_v": Key(5.0, "float", "V", 0.1, 10.0, help="amplitude input max"),
    "resonant.amplitude_channel": Key("ao0", "str", help="controller amplitude input (AO)"),
    "resonant.slow_galvo_channel": Key("ao1", "str"),
    "resonant.galvo_um_per_volt": Key(50.0, "float", "um/V", 1e-3, 1e4, help="slow galvo"),
    "resonant.max_galvo_volts": Key(10.0, "float", "V", 0.1, 10.0),
    "resonant.galvo_rate_hz": Key(200e3, "float", "Hz", 1e3, 2e6, help="slow-galvo AO rate"),
    "resonant.galvo_lag_us": Key(
        100.0, "float", "us", 0.0, 5000.0, help="slow galvo time constant (command leads it)"
    ),
    "resonant.line_clock_terminal": Key("PFI0", "str", help="controller sync (line clock)"),
    "resonant.line_counter": Key("ctr0", "str", help="counter measuring line periods"),
    "resonant.frame_counter": Key("ctr1", "str", help="counter making the frame clock"),
    "resonant.measure_periods": Key(1000, "int", "periods", 10, 1_000_000),
    "resonant.line_phase_file": Key(
        "", "str", help="JSON {zooms, phases_us}: line phase at scanner.zoom (else line_phase_us)"
    ),
    "resonant.track_line_phase": Key(False, "bool", help="re-estimate the line phase online"),
    "resonant.track_every_s": Key(1.0, "float", "s", 0.1, 600.0, help="frames averaged per step"),
    # light stimulator
    "stimulator.kind": Key("light", "str", choices=("light", "mea", "none")),
    "stimulator.channels": Key(["ao2", "ao3", "ao4"], "strs", help="power, x galvo, y galvo"),
    "stimulator.max_power_mw": Key(50.0, "float", "mW", 0.0, 1000.0),
    "stimulator.max_pulse_ms": Key(100.0, "float", "ms", 0.01, 10000.0),
    "stimulator.max_pulses": Key(200, "int", "", 1, 100000),
    "stimulator.max_pulse_rate_hz": Key(100.0, "float", "Hz", 0.001, 10000.0),
    "stimulator.max_duty_cycle": Key(0.5, "float", "", 0.0, 1.0),
    "stimulator.max_train_s": Key(10.0, "float", "s", 0.0, 600.0),
    "stimulator.max_targets": Key(50, "int", "", 1, 10000),
    "stimulator.max_mean_power_mw": Key(
        20.0, "float", "mW", 0.0, 1000.0, help="trailing 1 s average"
    ),
    "stimulator.mw_per_volt": Key(10.0, "float", "mW/V", 1e-3, 1e4),
    "stimulator.um_per_volt": Key([30.0, 30.0], "float2", "um/V", 1e-3, 1e4),
    "stimulator.output_rate_hz": Key(20000.0, "float", "Hz", 100.0, 2e6),
    # online processing
    "rois.source": Key("detect", "str", help="'detect' or a path to an ROI file (.npy/.npz)"),
    "rois.reference_s": Key(8.0, "float", "s", 0.5, 600.0, help="frames used to find ROIs"),
    "rois.cell_diameter_um": Key(12.0, "float", "um", 2.0, 100.0),
    "rois.max_rois": Key(2000, "int", "", 1, 100000),
    "rois.min_relative_excess": Key(
        0.0, "float", "", 0.0, 1.0,
        help="drop detected ROIs dimmer above background than this fraction of the median ROI "
        "(0 keeps all; 0.5 keeps in-focus somata, see docs/PIPELINE.md)",
    ),
    "rois.zstack_range_um": Key(
        0.0, "float", "um", 0.0, 200.0,
        help="after the reference period, take a reference z-stack from -range to +range "
        "with the focus device and keep the ROIs whose soma the plane cuts (0: no z-stack)",
    ),
    "rois.zstack_step_um": Key(1.0, "float", "um", 0.1, 50.0, help="reference z-stack spacing"),
    "rois.zstack_frames_per_plane": Key(
        30, "int", "", 1, 10000, help="frames averaged (motion-corrected) per z-stack plane"
    ),
    "rois.zstack_settle_s": Key(
        0.03, "float", "s", 0.0, 10.0, help="after each focus step before frames count"
    ),
    "rois.min_axial_fraction": Key(
        0.5, "float", "", 0.0, 1.0,
        help="with a reference z-stack: keep ROIs at least this bright in the imaging plane "
        "relative to their brightest plane (0.5: the plane cuts the soma)",
    ),
    "dff.baseline_window_s": Key(60.0, "float", "s", 1.0, 3600.0),
    "dff.percentile": Key(8.0, "float", "%", 0.0, 100.0),
    "noise.window_s": Key(
        30.0, "float", "s", 1.0, 3600.0, help="trailing window of the online value"
    ),
    "noise.enabled": Key(True, "bool"),
    "motion.enabled": Key(False, "bool", help="rigid motion correction (phase correlation)"),
    "motion.max_shift_um": Key(15.0, "float", "um", 0.5, 500.0),
    "motion.registration_px": Key(256, "int", "px", 32, 4096, help="frames binned to this size"),
    "neuropil.enabled": Key(False, "bool", help="off by default: see docs/PIPELINE.md"),
    "neuropil.coefficient": Key(0.7, "float", "", 0.0, 1.0, help="F - r * F_neuropil"),
    "deconvolution.enabled": Key(True, "bool", help="online OASIS (AR(1) or AR(2))"),
    "deconvolution.decay_tau_s": Key(0.2, "float", "s", 0.01, 10.0, help="indicator decay"),
    "deconvolution.model": Key(
        "ar1", "str", choices=("ar1", "ar2"), help="OASIS AR(1) (decay) or AR(2) (rise and decay)"
    ),
    "deconvolution.rise_tau_s": Key(
        0.02, "float", "s", 0.001, 1.0, help="indicator rise (AR(2) only)"
    ),
    "deconvolution.s_min_sds": Key(3.0, "float", "SD", 0.0, 20.0, help="s_min in noise SDs"),
    "deconvolution.spike_lag_s": Key(0.2, "float", "s", 0.0, 10.0, help="spike estimate lag"),
    "rg.enabled": Key(False, "bool", help="incremental coarse-graining stage"),
    "rg.signal": Key("spikes", "str", choices=("spikes", "calcium", "dff")),
    "rg.repair_every_s": Key(30.0, "float", "s", 1.0, 36000.0),
    "rg.publish_every_s": Key(2.0, "float", "s", 0.1, 3600.0),
    "loop.ring_frames": Key(64, "int", "frames", 2, 100000),
    "loop.late_tolerance_s": Key(
        2.0, "float", "s", 0.0, 60.0, help="realtime: a frame later than this is dropped"
    ),
    "loop.history_s": Key(20.0, "float", "s", 1.0, 600.0, help="dF/F history protocols can read"),
    "recording.frames": Key(False, "bool", help="store raw frames in session.h5"),
    "recording.out_dir": Key("sessions", "str"),
    "recording.flush_s": Key(1.0, "float", "s", 0.05, 60.0),
    # MEA recording and stimulation (Intan RHX over TCP)
    "spikes.kind": Key("none", "str", choices=("none", "rhx"), help="spike blocks as loop input"),
    "mea.host": Key("127.0.0.1", "str"),
    "mea.command_port": Key(5000, "int", "", 0, 65535, help="0: ephemeral (simulator)"),
    "mea.sample_rate_hz": Key(30000, "int", "Hz", 20000, 30000),
    "mea.stim_step_ua": Key(1.0, "float", "uA", 0.01, 10.0),
    "mea.blocks_per_write": Key(1, "int", "blocks", 1, 100, help="128 samples per block"),
    "mea.timeout_s": Key(10.0, "float", "s", 0.1, 600.0),
    "mea.spike_threshold_uv": Key(-70.0, "float", "uV", -5000.0, 5000.0),
    "mea.stim_readback": Key(True, "bool"),
    "mea.n_electrodes": Key(64, "int", "", 1, 1024),
    "mea.max_rate_hz": Key(1000.0, "float", "Hz", 0.001, 100000.0),
    "mea.max_charge_per_phase_nc": Key(10.0, "float", "nC", 0.0, 1000.0),
    # physics of the simulated rig (ignored by real rigs)
    "sim.seed": Key(1, "int", "", 0, 2**63 - 1),
    "sim.galvo_lag_us": Key(50.0, "float", "us", 0.0, 5000.0),
    "sim.galvo_um_per_volt": Key([30.0, 30.0], "float2", "um/V", 1e-3, 1e4),
    "sim.laser_power_mw": Key(40.0, "float", "mW", 0.0, 1000.0),
    "sim.pmt_counts_per_photon": Key(120.0, "float", "codes", 0.0, 30000.0),
    "sim.pmt_gain_spread": Key(0.3, "float", "", 0.0, 3.0),
    "sim.pmt_offset_counts": Key(0.0, "float", "codes", -30000.0, 30000.0),
    "sim.read_noise_counts": Key(2.0, "float", "codes", 0.0, 10000.0),
    "sim.stim_spot_radius_um": Key(8.0, "float", "um", 0.5, 200.0),
    "sim.ai_block_ms": Key(5.0, "float", "ms", 0.1, 1000.0),
    # physics of the simulated resonant scanner (slow galvo: sim.galvo_lag_us and
    # sim.galvo_um_per_volt[1]; detection: sim.laser_power_mw, sim.pmt_*, sim.read_noise_counts)
    "sim.resonant_natural_hz": Key(7925.52, "float", "Hz", 100.0, 100000.0),
    "sim.resonant_lag_us": Key(1.5, "float", "us", -20.0, 20.0, help="mirror lag at amplitude 0"),
    "sim.resonant_lag_amplitude_us": Key(
        0.8, "float", "us", -20.0, 20.0, help="extra lag at full amplitude, ~ amplitude^2"
    ),
    "sim.resonant_tempco_per_k": Key(-1.25e-4, "float", "1/K", -0.01, 0.01),
    "sim.resonant_heating_k": Key(4.0, "float", "K", 0.0, 100.0, help="at full amplitude"),
    "sim.resonant_thermal_tau_s": Key(60.0, "float", "s", 0.01, 1e5),
    "sim.resonant_amplitude_shift_hz": Key(
        -2.0, "float", "Hz", -1000.0, 1000.0, help="at full amplitude, ~ amplitude^2"
    ),
    "sim.resonant_um_per_volt": Key(62.5, "float", "um/V", 1e-3, 1e5, help="true amplitude cal"),
    "sim.sub_bin_max_um": Key(
        0.75, "float", "um", 0.01, 10.0, help="beam travel per simulated photon sub-bin"
    ),
    # focus device (rig/focus.py, docs/devices/optotune.md "Multi-plane imaging")
    "focus.kind": Key(
        "none", "str", choices=("none", "piezo", "optotune"), help="what moves the imaged plane"
    ),
    "focus.port": Key(
        "optotune_sim://",
        "str",
        help="optotune: port name, URL or description text; sim rigs: optotune_sim://",
    ),
    "focus.f_objective_mm": Key(
        12.5, "float", "mm", 0.1, 1000.0, help="objective focal length (tube standard / mag.)"
    ),
    "focus.f_scan_mm": Key(50.0, "float", "mm", 1.0, 10000.0, help="scan lens focal length"),
    "focus.f_tube_mm": Key(200.0, "float", "mm", 1.0, 10000.0, help="tube lens focal length"),
    "focus.relay_mm": Key(
        [], "floats", "mm", 1.0, 10000.0, help="4f relays lens -> scan mirror: f_r1, f_r2, ..."
    ),
    "focus.zero_dpt": Key(
        0.0, "float", "dpt", -50.0, 50.0, help="focal power that images the nominal plane z = 0"
    ),
    "focus.focal_power_range_dpt": Key(
        [-5.0, 5.0], "float2", "dpt", -50.0, 50.0, help="focal powers the rig may use"
    ),
    "focus.calibration_file": Key(
        "", "str", help="FocalPowerZCalibration JSON (bead stack); overrides the optics"
    ),
    "focus.current_limit_ma": Key(
        0.0, "float", "mA", 0.0, 1000.0, help="software limit +- this, set at open; 0: keep"
    ),
    "focus.full_scale_code": Key(4095, "int", "", 4095, 4096, help="current code full scale"),
    "focus.timeout_s": Key(0.5, "float", "s", 0.01, 60.0, help="lens reply timeout"),
    "focus.on_fault": Key(
        "record", "str", choices=("record", "abort"), help="a lens that stops answering"
    ),
    "focus.read_every_s": Key(
        1.0, "float", "s", 0.05, 3600.0, help="lens readings into events.jsonl (own thread)"
    ),
    "focus.piezo_channel": Key("ao5", "str", help="piezo: static AO channel"),
    "focus.piezo_um_per_volt": Key(40.0, "float", "um/V", 1e-3, 1e4),
    "focus.piezo_zero_um": Key(-200.0, "float", "um", -1e4, 1e4, help="piezo z at 0 V"),
    "focus.travel_um": Key(
        [-200.0, 200.0], "float2", "um", -1e4, 1e4, help="piezo: allowed z range"
    ),
    # volumetric imaging: a plane per frame (docs/devices/optotune.md)
    "volume.planes_um": Key(
        [], "floats", "um", -1e4, 1e4, help="z of each plane; empty: single plane"
    ),
    "volume.frames_per_plane": Key(1, "int", "frames", 1, 10000),
    "volume.settle_frames": Key(
        0, "int", "frames", 0, 1000, help="settling frames after each plane change"
    ),
    "volume.settle_s": Key(
        0.0, "float", "s", 0.0, 10.0, help="or: frames starting this soon after a step settle"
    ),
    "volume.settling": Key(
        "flag", "str", choices=("flag", "discard"), help="settling frames: traced or not"
    ),
}

SECTIONS = sorted({k.split(".")[0] for k in SCHEMA} | {"world", "culture"})


class RigConfig:
    """Validated settings: flat `section.key` -> value, plus the nested `[world]` table."""

    def __init__(
        self,
        values: dict[str, Any],
        world: dict[str, Any],
        source: str,
        culture: dict[str, Any] | None = None,
    ) -> None:
        self.values = values
        self.world = world
        self.culture = culture or {}
        self.source = source

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def section(self, name: str) -> dict[str, Any]:
        prefix = name + "."
        return {k[len(prefix) :]: v for k, v in self.values.items() if k.startswith(prefix)}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in self.values.items():
            sec, name = k.split(".", 1)
            out.setdefault(sec, {})[name] = v
        out["world"] = self.world
        if self.culture:
            out["culture"] = self.culture
        return out

    @property
    def simulated(self) -> bool:
        return self.values["daq.backend"] == "sim"


def coerce(key: str, value: Any, spec: Key, where: str = "") -> Any:
    """Check type and range of one value; return it in canonical form or raise ConfigError."""
    at = f" (in {where})" if where else ""
    unit = f" {spec.unit}" if spec.unit else ""

    def bad(expect: str) -> ConfigError:
        return ConfigError(f"config key '{key}' = {value!r}{at} must be {expect}")

    def in_range(x: float) -> float:
        if (spec.lo is not None and x < spec.lo) or (spec.hi is not None and x > spec.hi):
            raise ConfigError(
                f"config key '{key}' = {x:g}{unit}{at} is outside the allowed range "
                f"[{spec.lo:g}, {spec.hi:g}]{unit}"
            )
        return x

    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise bad("an integer")
        return int(in_range(value))
    if spec.kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(f"a number{unit}")
        return float(in_range(float(value)))
    if spec.kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        if spec.choices and value not in spec.choices:
            raise ConfigError(
                f"config key '{key}' = {value!r}{at} must be one of {', '.join(spec.choices)}"
            )
        return value
    if spec.kind == "float2":
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise bad(f"a pair of numbers [x, y]{unit}")
        return [in_range(float(v)) for v in value]
    if spec.kind == "floats":
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise bad(f"a list of numbers [a, b, ...]{unit}")
        return [in_range(float(v)) for v in value]
    if spec.kind == "strs":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad('a list of strings, e.g. ["ao0", "ao1"]')
        return list(value)
    raise AssertionError(spec.kind)


def unknown_key_error(key: str, where: str = "") -> ConfigError:
    at = f" in {where}" if where else ""
    close = difflib.get_close_matches(key, list(SCHEMA), n=3)
    hint = (
        f"; did you mean {', '.join(repr(c) for c in close)}?"
        if close
        else f"; sections are {', '.join(SECTIONS)} (see `rig config show`)"
    )
    return ConfigError(f"unknown config key '{key}'{at}{hint}")


def parse_value(text: str) -> Any:
    """A --set value in TOML syntax (256, 1.5e6, true, [1, 2], "x"); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def split_overrides(assignments: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split KEY=VALUE strings into rig keys (parsed) and protocol parameters (raw text)."""
    rig: dict[str, Any] = {}
    protocol: dict[str, str] = {}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(
                f"--set {item!r}: expected KEY=VALUE, e.g. scanner.pixels_per_line=256"
            )
        key, text = item.split("=", 1)
        key = key.strip()
        if key.startswith("protocol."):
            protocol[key[len("protocol.") :]] = text.strip()
        else:
            rig[key] = parse_value(text.strip())
    return rig, protocol


def embedded_rig_path(name: str) -> Path | None:
    candidate = resources.files("rig") / "rigs" / f"{name}.toml"
    return Path(str(candidate)) if candidate.is_file() else None


def load_rig_config(rig: str = "sim", overrides: dict[str, Any] | None = None) -> RigConfig:
    """Load the embedded rig `rig` (e.g. 'sim') or a TOML file, then apply overrides."""
    path = embedded_rig_path(rig) if "/" not in rig and not rig.endswith(".toml") else None
    if path is None:
        path = Path(rig)
        if not path.is_file():
            raise ConfigError(
                f"rig {rig!r} is neither an embedded rig (available: "
                f"{', '.join(embedded_rigs())}) nor an existing TOML file"
            )
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    values = {k: spec.default for k, spec in SCHEMA.items()}
    world: dict[str, Any] = {}
    culture: dict[str, Any] = {}
    for section, table in data.items():
        if section == "world":
            world = dict(table)
            continue
        if section == "culture":
            culture = dict(table)
            continue
        if not isinstance(table, dict):
            raise unknown_key_error(section, str(path))
        for name, value in table.items():
            key = f"{section}.{name}"
            if key not in SCHEMA:
                raise unknown_key_error(key, str(path))
            values[key] = coerce(key, value, SCHEMA[key], str(path))
    for key, value in (overrides or {}).items():
        if key.startswith("world."):
            _set_nested(world, key.split(".")[1:], value)
            continue
        if key.startswith("culture."):
            _set_nested(culture, key.split(".")[1:], value)
            continue
        if key not in SCHEMA:
            raise unknown_key_error(key, "--set")
        values[key] = coerce(key, value, SCHEMA[key], "--set")
    config = RigConfig(values, world, str(path), culture)
    if config.simulated:
        world_config(config)  # validate the [world] table now, before anything runs
        if config["spikes.kind"] == "rhx":
            culture_config(config)
    return config


def culture_config(config: RigConfig):  # -> CultureConfig (simulated MEA rigs only)
    from simulators.culture.config import CultureConfig

    try:
        return CultureConfig.from_dict(config.culture)
    except ValueError as e:
        raise ConfigError(f"[culture] in {config.source}: {e}") from e


def _set_nested(d: dict[str, Any], path: list[str], value: Any) -> None:
    for p in path[:-1]:
        d = d.setdefault(p, {})
    d[path[-1]] = value


def world_config(config: RigConfig):  # -> WorldConfig (imported lazily: real rigs need no sim)
    from simulators.world.config import WorldConfig

    try:
        return WorldConfig.from_dict(config.world)
    except ValueError as e:
        raise ConfigError(f"[world] in {config.source}: {e}") from e


def embedded_rigs() -> list[str]:
    folder = resources.files("rig") / "rigs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def describe(config: RigConfig) -> list[tuple[str, str, str, str]]:
    """Rows (key, value, unit, help) for `rig config show`: every key, defaults included."""
    rows = []
    for key, spec in SCHEMA.items():
        rows.append((key, _fmt(config.values[key]), spec.unit, spec.help))
    if config.simulated:
        for key, value in _flatten("world", world_config(config).to_dict()):
            rows.append((key, _fmt(value), _unit_from_name(key), ""))
        if config["spikes.kind"] == "rhx":
            for key, value in _flatten("culture", culture_config(config).to_dict()):
                rows.append((key, _fmt(value), _unit_from_name(key), ""))
    return rows


def _flatten(prefix: str, d: dict[str, Any]) -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out.extend(_flatten(f"{prefix}.{k}", v))
        else:
            out.append((f"{prefix}.{k}", v))
    return out


_UNIT_SUFFIXES = {
    "_um": "um",
    "_s": "s",
    "_ms": "ms",
    "_us": "us",
    "_hz": "Hz",
    "_mw": "mW",
    "_mhz": "MHz",
    "_per_mm3": "1/mm^3",
    "_m": "m",
    "_m_per_s": "m/s",
    "_dpt": "dpt",
    "_mm": "mm",
    "_k": "K",
}


def _unit_from_name(key: str) -> str:
    for suffix, unit in sorted(_UNIT_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if key.endswith(suffix):
            return unit
    return ""


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
