"""Protocol parameters: declared with unit and limits, checked before the run."""

import pytest

from rig.config import ConfigError
from rig.protocol import Param, Protocol, available_protocols, load_protocol_class


class Example(Protocol):
    rate_hz = Param(1.0, unit="Hz", min=0.1, max=10.0, help="stimuli per second")
    count = Param(3, min=1, max=5)
    mode = Param("a", choices=("a", "b"))
    centre_um = Param([0.0, 0.0], unit="um", min=-100, max=100, length=2)
    enabled = Param(True)


def test_defaults_and_types():
    p = Example()
    assert p.rate_hz == 1.0 and p.count == 3 and p.mode == "a" and p.centre_um == [0.0, 0.0]
    assert p.enabled is True


def test_values_from_text_are_converted():
    p = Example(rate_hz="2.5", count="4", centre_um="[10, -5]", enabled="false")
    assert p.rate_hz == 2.5 and p.count == 4 and p.centre_um == [10.0, -5.0] and p.enabled is False


def test_out_of_range_names_parameter_value_and_range():
    with pytest.raises(ConfigError) as err:
        Example(rate_hz=50)
    assert (
        "'rate_hz'" in str(err.value)
        and "50" in str(err.value)
        and "[0.1, 10] Hz" in str(err.value)
    )


@pytest.mark.parametrize(
    "kw, text",
    [
        ({"count": 2.5}, "integer"),
        ({"mode": "c"}, "one of a, b"),
        ({"centre_um": [1.0]}, "2 elements"),
        ({"centre_um": [1.0, 500.0]}, "outside"),
        ({"enabled": 1}, "true or false"),
        ({"rate_hz": "fast"}, "must be a number"),
    ],
)
def test_bad_values_are_refused(kw, text):
    with pytest.raises(ConfigError, match=text):
        Example(**kw)


def test_unknown_parameter_lists_the_real_ones():
    with pytest.raises(ConfigError) as err:
        Example(rate=1.0)
    assert "unknown parameter 'rate'" in str(err.value) and "rate_hz" in str(err.value)


def test_shipped_protocols_load_and_declare_units():
    names = available_protocols()
    assert {"open_loop_train", "target_pattern"} <= set(names)
    for name in names:
        cls = load_protocol_class(name)
        assert cls.parameters, name
        cls()  # defaults are valid


def test_unknown_protocol_lists_the_available_ones():
    with pytest.raises(ConfigError) as err:
        load_protocol_class("no_such_protocol")
    assert "unknown protocol 'no_such_protocol'" in str(err.value)
    assert "target_pattern" in str(err.value)
