"""Rig configuration: every key typed and range-checked; bad input named before anything runs."""

import pytest

from rig.config import ConfigError, describe, load_rig_config, parse_value, split_overrides


def test_embedded_sim_rig_is_the_resonant_rig_of_the_seed_paper():
    """Issue 4: the default rig is resonant, 512 x 512 over 0.5 x 0.5 mm (about 30 Hz: the
    golden-case arithmetic is tested with the scan engine)."""
    config = load_rig_config("sim")
    assert config.simulated
    assert config["scanner.kind"] == "resonant"
    assert config["scanner.bidirectional"] is True
    assert (config["scanner.pixels_per_line"], config["scanner.lines"]) == (512, 512)
    assert config["scanner.fov_um"] == [500.0, 500.0]
    assert config["stimulator.kind"] == "light"


def test_the_galvo_rig_stays_available():
    config = load_rig_config("sim-galvo")
    assert config["scanner.kind"] == "galvo"
    assert config["scanner.pixels_per_line"] == 256
    assert config["scanner.fov_um"] == [300.0, 300.0]


def test_set_overrides_are_typed_and_applied():
    rig, protocol = split_overrides(
        [
            "scanner.pixels_per_line=128",
            "recording.frames=true",
            "scanner.fov_um=[200, 100]",
            "protocol.power_mw=3",
        ]
    )
    assert rig == {
        "scanner.pixels_per_line": 128,
        "recording.frames": True,
        "scanner.fov_um": [200, 100],
    }
    assert protocol == {"power_mw": "3"}
    config = load_rig_config("sim", rig)
    assert config["scanner.pixels_per_line"] == 128
    assert config["recording.frames"] is True
    assert config["scanner.fov_um"] == [200.0, 100.0]


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as err:
        load_rig_config("sim", {"scanner.pixel_per_line": 128})
    assert "unknown config key 'scanner.pixel_per_line'" in str(err.value)
    assert "scanner.pixels_per_line" in str(err.value)


def test_out_of_range_value_names_key_value_and_range():
    with pytest.raises(ConfigError) as err:
        load_rig_config("sim", {"scanner.zoom": 500.0})
    msg = str(err.value)
    assert "scanner.zoom" in msg and "500" in msg and "[0.1, 100]" in msg


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="must be an integer"):
        load_rig_config("sim", {"scanner.lines": 12.5})
    with pytest.raises(ConfigError, match="true or false"):
        load_rig_config("sim", {"recording.frames": "yes"})
    with pytest.raises(ConfigError, match="one of sim, nidaqmx"):
        load_rig_config("sim", {"daq.backend": "labview"})


def test_unknown_key_in_a_rig_file_names_the_file(tmp_path):
    path = tmp_path / "myrig.toml"
    path.write_text('[daq]\nbackend = "sim"\n[scanner]\nzoomm = 2.0\n')
    with pytest.raises(ConfigError) as err:
        load_rig_config(str(path))
    assert "scanner.zoomm" in str(err.value) and "myrig.toml" in str(err.value)


def test_unknown_world_key_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match="world"):
        load_rig_config("sim", {"world.no_such_key": 1})


def test_missing_rig_lists_the_embedded_rigs():
    with pytest.raises(ConfigError, match="sim"):
        load_rig_config("no-such-rig")


def test_describe_lists_every_key_with_unit():
    rows = describe(load_rig_config("sim"))
    keys = {r[0]: r for r in rows}
    assert keys["scanner.fov_um"][2] == "um"
    assert keys["scanner.sample_rate_hz"][2] == "Hz"
    assert any(k.startswith("world.") for k in keys)


def test_parse_value_reads_toml_literals_and_bare_words():
    assert parse_value("1.5e6") == 1.5e6
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("true") is True
    assert parse_value("detect") == "detect"


def test_the_documented_ni_rig_example_is_valid_and_names_the_simulator_without_ni():
    from pathlib import Path

    from drivers.errors import DeviceNotFound
    from rig.assembly import build_rig

    example = Path(__file__).resolve().parents[2] / "docs" / "rigs" / "ni-galvo-example.toml"
    config = load_rig_config(str(example))
    assert not config.simulated and config["stimulator.channels"][0] == "Dev2/ao0"
    rig = build_rig(config)  # scan settings and stimulator limits validate without hardware
    assert rig.scanner.frame_rate_hz > 0
    with pytest.raises(DeviceNotFound, match="--rig sim"):
        rig.open_all()
    rig.close_all()
