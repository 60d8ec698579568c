"""MEA stimuli: charge arithmetic, charge balance, device limits and the device grid
(hardware.md section 4: RHS amplitudes are steps x at most 255, timings whole samples)."""

import json
import math

import pytest

from drivers.errors import LimitError
from drivers.mea.stimulus import (
    ElectrodeTrain,
    MEAStimulus,
    Pulse,
    PulseTrain,
    StimulatorCapabilities,
    validate_stimulus,
)

FS = 30_000.0


def rhs_caps(**changes) -> StimulatorCapabilities:
    """An RHS controller at 30 kHz with a 1 uA step (max 255 uA), 4 electrodes."""
    d = dict(
        name="test RHS",
        electrodes=("A-000", "A-001", "A-002", "A-003"),
        amplitude_step_ua=1.0,
        max_amplitude_ua=255.0,
        time_step_us=1e6 / FS,
        max_phase_us=5000.0,
        max_interphase_us=5000.0,
        max_pulses=256,
        max_rate_hz=1000.0,
        min_rate_hz=1.0,
    )
    d.update(changes)
    return StimulatorCapabilities(**d)


def test_charge_per_phase_is_current_times_duration():
    # 10 uA for 200 us = 2000 pC = 2 nC
    p = Pulse(10.0, 200.0)
    assert p.leading_charge_nc == pytest.approx(2.0)
    assert p.phases == ((-10.0, 200.0), (10.0, 200.0))  # cathodic (negative) first
    assert p.net_charge_nc == pytest.approx(0.0) and p.balanced


def test_second_phase_defaults_balance_the_charge():
    # biphasic: A1 D1 = A2 D2
    p = Pulse(12.0, 100.0, second_phase_us=300.0)
    assert p.second_phase_ua == pytest.approx(4.0)
    assert p.balanced
    # triphasic: 2 A1 D1 = A2 D2, phases -A1, +A2, -A1
    t = Pulse(5.0, 100.0, shape="triphasic")
    assert t.second_phase_ua == pytest.approx(10.0)
    assert [math.copysign(1, a) for a, _ in t.phases] == [-1, 1, -1]
    assert t.balanced and t.duration_us == pytest.approx(300.0)
    anodic = Pulse(5.0, 100.0, cathodic_first=False)
    assert anodic.phases[0][0] > 0 and anodic.balanced


def test_interphase_gap_adds_time_but_no_charge():
    p = Pulse(10.0, 100.0, interphase_us=50.0)
    assert p.phases[1] == (0.0, 50.0)
    assert p.duration_us == pytest.approx(250.0)
    assert p.balanced


def test_unbalanced_charge_is_refused_unless_explicitly_allowed():
    unbalanced = Pulse(10.0, 200.0, second_phase_ua=5.0)
    assert unbalanced.net_charge_nc == pytest.approx(-1.0)  # -2 nC + 1 nC
    stim = MEAStimulus.on("A-000", unbalanced)
    with pytest.raises(LimitError, match="unbalanced charge") as e:
        validate_stimulus(stim, rhs_caps())
    assert "-1 nC" in str(e.value) and "allow_unbalanced" in str(e.value)
    allowed = MEAStimulus.on("A-000", unbalanced, allow_unbalanced=True)
    assert validate_stimulus(allowed, rhs_caps()).trains[0].train.pulse.net_charge_nc == (
        pytest.approx(-1.0)
    )


def test_a_balanced_request_the_grid_cannot_deliver_balanced_is_refused():
    # 3 uA x 100 us balanced by 1.5 uA x 200 us; on a 1 uA grid 1.5 uA becomes 2 uA
    p = Pulse(3.0, 100.0, second_phase_us=200.0)
    assert p.balanced
    with pytest.raises(LimitError, match="device grid"):
        validate_stimulus(MEAStimulus.on("A-000", p), rhs_caps())


def test_amplitude_over_the_device_limit_names_field_value_and_range():
    with pytest.raises(LimitError) as e:
        validate_stimulus(MEAStimulus.on("A-000", Pulse(300.0, 100.0)), rhs_caps())
    msg = str(e.value)
    assert "first_phase_ua = 300" in msg and "[1, 255]" in msg


def test_amplitude_below_one_step_is_refused():
    with pytest.raises(LimitError, match="rounds to 0"):
        validate_stimulus(MEAStimulus.on("A-000", Pulse(0.4, 100.0)), rhs_caps())


def test_values_are_quantised_to_the_device_grid():
    # 10.4 uA on a 1 uA grid -> 10 uA; 110 us on a 33.3 us grid (30 kHz) -> 3 samples = 100 us
    q = validate_stimulus(MEAStimulus.on("A-000", Pulse(10.4, 110.0)), rhs_caps())
    p = q.trains[0].train.pulse
    assert p.first_phase_ua == 10.0 and p.second_phase_ua == 10.0
    assert p.first_phase_us == pytest.approx(100.0)
    step = rhs_caps().time_step_us
    assert p.first_phase_us / step == pytest.approx(round(p.first_phase_us / step))


def test_a_rate_is_delivered_as_a_whole_number_of_samples():
    # 300 Hz = 3333.3 us = 100 samples at 30 kHz: exact; 700 Hz = 42.86 samples -> 43
    q = validate_stimulus(MEAStimulus.on("A-000", Pulse(10, 100), 5, 700.0), rhs_caps())
    period_samples = 1e6 / q.trains[0].train.rate_hz / rhs_caps().time_step_us
    assert period_samples == pytest.approx(43.0)


def test_an_electrode_that_does_not_exist_is_refused_by_name():
    with pytest.raises(LimitError, match="'B-007' does not exist"):
        validate_stimulus(MEAStimulus.on("B-007", Pulse(10, 100)), rhs_caps())


def test_train_limits_pulse_count_rate_and_overlap():
    caps = rhs_caps()
    with pytest.raises(LimitError, match="n_pulses = 300"):
        validate_stimulus(MEAStimulus.on("A-000", Pulse(10, 100), 300, 100.0), caps)
    with pytest.raises(LimitError, match="rate_hz = 2000"):
        validate_stimulus(MEAStimulus.on("A-000", Pulse(10, 100), 3, 2000.0), caps)
    with pytest.raises(LimitError, match="give rate_hz"):
        PulseTrain(Pulse(10, 100), 3)
    with pytest.raises(LimitError, match="overlap"):  # 400 us pulse, 5 kHz = 200 us period
        PulseTrain(Pulse(10, 200), 3, 5000.0)


def test_charge_per_phase_safety_limit():
    caps = rhs_caps(max_charge_per_phase_nc=4.0)
    validate_stimulus(MEAStimulus.on("A-000", Pulse(20, 200)), caps)  # 4 nC: at the limit
    with pytest.raises(LimitError, match="max_charge_per_phase_nc"):
        validate_stimulus(MEAStimulus.on("A-000", Pulse(25, 200)), caps)


def test_interphase_gap_on_a_shape_the_device_cannot_do():
    with pytest.raises(LimitError, match="no interphase gap"):
        Pulse(10, 100, interphase_us=50, shape="triphasic")
    caps = rhs_caps(interphase_shapes=())
    with pytest.raises(LimitError, match="interphase gap only"):
        validate_stimulus(MEAStimulus.on("A-000", Pulse(10, 100, interphase_us=50)), caps)


def test_one_stimulus_on_several_electrode_sets():
    stim = MEAStimulus(
        (
            ElectrodeTrain(("A-000", "A-001"), PulseTrain(Pulse(10, 100), 2, 50.0)),
            ElectrodeTrain(("A-002",), PulseTrain(Pulse(20, 200, shape="triphasic"))),
        )
    )
    assert stim.electrodes == ("A-000", "A-001", "A-002")
    q = validate_stimulus(stim, rhs_caps())
    assert len(q.trains) == 2
    with pytest.raises(LimitError, match="appears twice"):
        MEAStimulus(
            (
                ElectrodeTrain(("A-000",), PulseTrain(Pulse(10, 100))),
                ElectrodeTrain(("A-000",), PulseTrain(Pulse(20, 100))),
            )
        )


def test_held_stimuli_need_a_repetition_rate():
    with pytest.raises(LimitError, match="repeat_while_held"):
        MEAStimulus.on("A-000", Pulse(10, 100), repeat_while_held=True)
    held = MEAStimulus.on("A-000", Pulse(10, 100), 1, 1000.0, repeat_while_held=True)
    assert held.repeat_period_us == pytest.approx(1000.0)


def test_summary_is_readable_and_serialisation_round_trips():
    stim = MEAStimulus.on(["A-000", "A-003"], Pulse(10, 200), 5, 20.0, label="probe")
    text = stim.summary()
    for part in (
        "probe",
        "biphasic",
        "cathodic-first",
        "-10 uA x 200 us",
        "2 nC",
        "balanced",
        "5 x",
        "20 Hz",
        "A-000, A-003",
    ):
        assert part in text
    d = json.loads(json.dumps(stim.to_dict()))
    assert MEAStimulus.from_dict(d) == stim


def test_bad_numbers_name_the_field():
    with pytest.raises(LimitError, match="first_phase_ua"):
        Pulse(float("nan"), 100)
    with pytest.raises(LimitError, match="first_phase_us = -5"):
        Pulse(10, -5)
    with pytest.raises(LimitError, match="shape = 'square'"):
        Pulse(10, 100, shape="square")
