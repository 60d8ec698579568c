"""The simulated culture (science.md section 6): Izhikevich neurons, spike delivery, STDP with
its window, clipping, pruning and decay, short-term plasticity, the LSA network, the MEA
layout, stimulation falloff, spontaneous bursting and determinism."""

import math

import numpy as np
import pytest

from simulators.culture import Culture, CultureConfigError, preset_config
from simulators.culture.config import CultureConfig
from simulators.culture.electrodes import falloff

DECAY = 0.9999995
BIG_NC = 60.0  # x 3 per nC (LSA presets) = input 180: fires a neuron at rest within the step


def quiet_pair(**overrides) -> Culture:
    """lsa_minimal without noise: the input (0) and output (1) neurons only do what we make
    them do; each sits on its own electrode."""
    return Culture(preset_config("lsa_minimal", noise_sd=0.0, **overrides), seed=1)


def force_spikes(c: Culture, neuron_steps: list[tuple[int, int]]) -> None:
    """Make neuron n fire in step t with a strong pulse on its own electrode."""
    el = {0: c.electrode_of("input"), 1: c.electrode_of("output")}
    for n, t in neuron_steps:
        c.queue_pulse(el[n], BIG_NC, t)


def spikes_of(c: Culture, neuron: int) -> list[int]:
    n, s = c.spike_log.since(0)
    return s[n == neuron].tolist()


def test_neurons_rest_without_input_and_fire_with_constant_drive():
    c = quiet_pair()
    c.run(2000)
    assert c.spike_log.n == 0
    c.set_drive([c.electrode_of("input")], 5.0)  # input 15 every ms: regular spiking
    c.run(2000)
    isi = np.diff(spikes_of(c, 0))
    assert isi.size > 10
    assert isi[-5:].std() <= 1.0  # regular (tonic) firing after adaptation


def test_fast_spiking_cells_fire_faster_than_regular_spiking_for_the_same_input():
    # Izhikevich 2003: FS (a = 0.1, d = 2) vs RS (a = 0.02, d = 8) under the same current
    rates = {}
    for kind, (n_e, n_i) in {"RS": (2, 0), "FS": (0, 2)}.items():
        c = Culture(
            preset_config("lsa_minimal", noise_sd=0.0, n_excitatory=n_e, n_inhibitory=n_i), seed=1
        )
        c.set_drive([c.electrode_of("input")], 5.0)
        c.run(3000)
        rates[kind] = len(spikes_of(c, 0))
    assert rates["FS"] > rates["RS"] > 0


def test_a_spike_reaches_the_target_in_the_next_step():
    # weight 100 drives the output over threshold in the step the input is delivered
    c = quiet_pair(excitatory_weight=100.0, weight_max=100.0)
    force_spikes(c, [(0, 50)])
    c.run(100)
    assert spikes_of(c, 0) == [50]
    assert spikes_of(c, 1) == [51]


@pytest.mark.parametrize("dt", [1, 5, 19])
def test_stdp_potentiation_is_0_1_times_0_95_to_the_dt(dt):
    c = quiet_pair()
    t_pre, t_post, total = 100, 100 + dt, 400
    force_spikes(c, [(0, t_pre), (1, t_post)])
    c.run(total)
    assert spikes_of(c, 0) == [t_pre] and spikes_of(c, 1) == [t_post]
    delta = 0.1 * 0.95**dt
    expected = 5.0 * DECAY**total + delta * DECAY ** (total - t_post)
    assert c.weight(0, 1) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dt", [1, 7])
def test_stdp_depression_when_the_output_fires_first(dt):
    c = quiet_pair()
    t_post, t_pre, total = 100, 100 + dt, 400
    force_spikes(c, [(1, t_post), (0, t_pre)])
    c.run(total)
    assert spikes_of(c, 1) == [t_post] and spikes_of(c, 0) == [t_pre]
    expected = 5.0 * DECAY**total - 0.1 * 0.95**dt * DECAY ** (total - t_pre)
    assert c.weight(0, 1) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("order", [[(0, 100), (1, 120)], [(0, 100), (1, 100)]])
def test_no_stdp_outside_1_to_19_ms(order):
    c = quiet_pair()
    force_spikes(c, order)
    c.run(300)
    assert c.weight(0, 1) == pytest.approx(5.0 * DECAY**300, rel=1e-12)


def test_plastic_weights_decay_every_ms():
    c = quiet_pair()
    c.run(100_000)
    assert c.weight(0, 1) == pytest.approx(5.0 * DECAY**100_000, rel=1e-9)


def test_weights_are_clipped_at_the_maximum():
    c = quiet_pair(excitatory_weight=9.95)
    force_spikes(c, [(0, 100), (1, 101), (0, 200), (1, 201)])  # two pairings, +0.095 each
    c.run(300)
    assert c.weight(0, 1) == pytest.approx(10.0 * DECAY**99, rel=1e-9)


def test_a_weight_that_reaches_zero_is_pruned_for_good():
    c = quiet_pair(excitatory_weight=0.05)
    force_spikes(c, [(1, 100), (0, 101)])  # depression 0.095 > 0.05
    c.run(150)
    assert c.weight(0, 1) == 0.0
    force_spikes(c, [(0, 200), (1, 201)])  # a potentiating pairing no longer acts
    c.run(100)
    assert c.weight(0, 1) == 0.0


def test_short_term_plasticity_follows_mongillo():
    # after one spike from rest: u = U + U (1 - U), x = 1 - u (Mongillo et al. 2008)
    c = quiet_pair(stp=True)
    force_spikes(c, [(0, 100)])
    c.run(101)
    u, x = c.short_term_state()
    big_u = 0.2
    u1 = big_u + big_u * (1 - big_u)
    assert u[0] == pytest.approx(u1) and x[0] == pytest.approx(1 - u1)
    # a second spike 50 ms later sees u relaxed towards U (tau_f 600 ms), x recovered
    # towards 1 (tau_d 200 ms), then jumps again
    force_spikes(c, [(0, 151)])
    c.run(60)
    ur = big_u + (u1 - big_u) * math.exp(-51 / 600)
    xr = 1 + (1 - u1 - 1) * math.exp(-51 / 200)
    u2 = ur + big_u * (1 - ur)
    u, x = c.short_term_state()
    assert u[0] == pytest.approx(u2) and x[0] == pytest.approx(xr - u2 * xr)


def test_lsa_paper_network_as_in_the_code():
    c = Culture(preset_config("lsa_paper"), seed=4)
    net = c.network
    assert net.n_neurons == 100
    assert net.inhibitory[:20].all() and not net.inhibitory[20:].any()
    assert (net.a[:20] == 0.1).all() and (net.d[:20] == 2).all()  # fast spiking
    assert (net.a[20:] == 0.02).all() and (net.d[20:] == 8).all()  # regular spiking
    pre = net.syn_pre
    assert not (pre == net.syn_post).any()  # no self-connections
    np.testing.assert_array_equal(net.syn_weight, np.where(pre < 20, -5.0, 5.0))
    # 100 draws with replacement among 99 others: expected distinct targets
    # 99 (1 - (98/99)^100) = 63.6
    out_degree = np.diff(net.syn_start)
    assert out_degree.max() <= 99
    assert out_degree.mean() == pytest.approx(99 * (1 - (98 / 99) ** 100), abs=1.5)
    assert (net.syn_plastic == ((pre >= 20) & (net.syn_post >= 20))).all()
    assert c.group("input").tolist() == list(range(20, 30))
    assert c.group("output").tolist() == list(range(50, 60))
    assert c.group("dummy").tolist() == list(range(60, 70))


def test_clusters_sit_on_their_own_electrodes_and_are_stimulated_fully():
    c = Culture(preset_config("lsa_paper"), seed=4)
    el = {g: c.electrode_of(g) for g in ("input", "output", "dummy")}
    assert len(set(el.values())) == 3
    neurons, coupling = c.stim_coupling.of(el["input"])
    assert set(neurons.tolist()) == set(range(20, 30))  # nobody else within reach
    assert coupling == pytest.approx(3.0)  # 1 nC per ms = the paper's +3 per ms


def test_mea_grid_and_stimulation_falloff():
    cfg = preset_config("culture")
    c = Culture(cfg, seed=2)
    pos = c.electrode_positions_um
    assert pos.shape == (64, 2)
    assert np.diff(np.unique(pos[:, 0])) == pytest.approx(200.0)
    assert c.electrode_labels[0] == "11" and c.electrode_labels[63] == "88"
    d = np.array([0.0, 15.0, 45.0, 200.0])
    f = falloff(d, cfg.electrode_radius_um, cfg.stim_length_um, cfg.stim_max_distance_um)
    assert f.tolist() == pytest.approx([1.0, 1.0, math.exp(-1.0), 0.0])
    neurons, coupling = c.stim_coupling.of(27)
    dist = np.hypot(*(c.network.positions_um[neurons, :2] - pos[27]).T)
    assert (dist <= cfg.stim_max_distance_um).all()
    expected = cfg.stim_current_per_nc * falloff(
        dist, cfg.electrode_radius_um, cfg.stim_length_um, cfg.stim_max_distance_um
    )
    assert coupling == pytest.approx(expected)
    assert (np.diff(coupling) <= 0).all()  # listed nearest first


def test_the_culture_bursts_spontaneously():
    # cultures >= 21 days in vitro burst (science.md section 6): most neurons fire within
    # tens of ms, separated by quiet periods
    c = Culture(preset_config("culture"), seed=3)
    c.run(20_000)
    neurons, steps = c.spike_log.since(0)
    counts = np.bincount(steps // 10, minlength=2000) / c.n_neurons  # spikes/neuron per 10 ms
    burst_bins = counts > 0.3
    onsets = np.flatnonzero(burst_bins[1:] & ~burst_bins[:-1])
    assert len(onsets) >= 5
    assert np.median(counts) < 0.01  # quiet between bursts
    assert len(np.unique(neurons)) > 0.9 * c.n_neurons  # bursts recruit the network


def test_same_seed_same_spikes_whatever_the_chunking():
    a = Culture(preset_config("lsa_paper"), seed=9)
    b = Culture(preset_config("lsa_paper"), seed=9)
    a.run(3000)
    for _ in range(30):
        b.run(100)
    for x, y in zip(a.spike_log.since(0), b.spike_log.since(0)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.true_weights(), b.true_weights())


def test_a_sister_noise_stream_keeps_the_wiring_and_changes_the_noise():
    a = Culture(preset_config("lsa_paper"), seed=9)
    b = Culture(preset_config("lsa_paper", noise_stream=1), seed=9)
    np.testing.assert_array_equal(a.network.syn_post, b.network.syn_post)
    a.run(2000)
    b.run(2000)
    assert not np.array_equal(a.spike_log.since(0)[1], b.spike_log.since(0)[1])


def test_a_second_observer_reads_spikes_by_step():
    c = Culture(preset_config("lsa_paper"), seed=3)
    c.run(500)
    neurons, steps = c.spike_log.since(0)
    n, s = c.spikes_in_steps(100, 200)
    keep = (steps >= 100) & (steps < 200)
    assert n.tolist() == neurons[keep].tolist() and s.tolist() == steps[keep].tolist()


def test_stop_on_the_output_neuron():
    c = Culture(preset_config("lsa_minimal"), seed=5)
    c.set_drive([c.electrode_of("input")], 1.0)
    ran = c.run(20_000, stop_on=c.group("output"))
    neurons, steps = c.last_run_spikes()
    assert ran < 20_000 and neurons[-1] == 1 and steps[-1] == c.steps_done - 1


def test_bad_configuration_is_refused_by_name():
    with pytest.raises(CultureConfigError, match="unknown key culture.neurons"):
        CultureConfig.from_dict({"preset": "culture", "neurons": 5})
    with pytest.raises(CultureConfigError, match=r"culture.noise_sd = -1 .*\[0, 100\]"):
        preset_config("culture", noise_sd=-1.0)
    with pytest.raises(CultureConfigError, match="preset = 'brain'"):
        preset_config("brain")
    with pytest.raises(ValueError, match="electrode 64 does not exist"):
        Culture(preset_config("lsa_minimal"), seed=1).queue_pulse(64, 1.0, 0)
    cfg = CultureConfig.from_dict({"preset": "lsa_paper", "noise_sd": 2.0})
    assert cfg.preset == "lsa_paper" and cfg.noise_sd == 2.0 and cfg.n_neurons == 100
