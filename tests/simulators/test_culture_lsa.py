"""The mechanism of learning by stimulation avoidance on `lsa_minimal` (issue 7 acceptance,
science.md section 6), directly on the culture model, without the loop.

One input and one output neuron joined by one plastic synapse (weight 5), each on its own
electrode; "stimulation on" = 1 nC per ms on the input's electrode (the paper's +3 every ms).
Three contingencies, 300 s each, seeds 1-10:

  stop_on_output   stimulation on until the output neuron fires (given up after 10 s), then
                   off for a pause drawn uniformly from 1-2 s, repeat (the closed loop)
  start_on_output  stimulation off until the output neuron fires, then on for a duration
                   drawn uniformly from 1-2 s (the closed loop's pause), repeat (inverse)
  yoked            the stop_on_output schedule of the same seed replayed open loop on a sister
                   culture (same wiring, independent noise stream: with the seed's own noise
                   and the same stimuli it would replay the closed-loop run exactly)

STDP predicts: when the output's spike ends the stimulation, the input rarely fires just
after the output, so depression is rare and the weight grows; when the output's spike starts
it, the input fires right after the output and depression dominates.
"""

import math

import numpy as np

from simulators.culture import Culture, preset_config

RUN_MS = 300_000
GIVE_UP_MS = 10_000
CHARGE_NC_PER_MS = 1.0


def pause_ms(rng: np.random.Generator) -> int:
    return int(rng.integers(1000, 2001))


def stop_on_output(seed: int) -> tuple[Culture, list[tuple[int, int]]]:
    c = Culture(preset_config("lsa_minimal"), seed)
    rng = np.random.default_rng([seed, 7])
    stim, output = c.electrode_of("input"), c.group("output")
    schedule = []
    while c.steps_done < RUN_MS:
        on = c.steps_done
        c.set_drive([stim], CHARGE_NC_PER_MS)
        c.run(min(GIVE_UP_MS, RUN_MS - c.steps_done), stop_on=output)
        c.clear_drive()
        schedule.append((on, c.steps_done))
        c.run(min(pause_ms(rng), RUN_MS - c.steps_done))
    return c, schedule


def start_on_output(seed: int) -> Culture:
    c = Culture(preset_config("lsa_minimal"), seed)
    rng = np.random.default_rng([seed, 7])
    stim, output = c.electrode_of("input"), c.group("output")
    while c.steps_done < RUN_MS:
        c.run(RUN_MS - c.steps_done, stop_on=output)
        if c.steps_done >= RUN_MS:
            break
        c.set_drive([stim], CHARGE_NC_PER_MS)
        c.run(min(pause_ms(rng), RUN_MS - c.steps_done))
        c.clear_drive()
    return c


def yoked(seed: int, schedule: list[tuple[int, int]]) -> Culture:
    c = Culture(preset_config("lsa_minimal", noise_stream=1), seed)
    stim = c.electrode_of("input")
    for on, off in schedule:
        c.run(on - c.steps_done)
        c.set_drive([stim], CHARGE_NC_PER_MS)
        c.run(off - on)
        c.clear_drive()
    c.run(RUN_MS - c.steps_done)
    return c


def test_stimulation_avoidance_strengthens_the_input_output_synapse():
    rows = []
    for seed in range(1, 11):
        closed, schedule = stop_on_output(seed)
        inverse = start_on_output(seed)
        replay = yoked(seed, schedule)
        w = [c.weight(0, 1) for c in (closed, inverse, replay)]
        rt = np.array([off - on for on, off in schedule])
        fifth = max(1, len(rt) // 5)
        rows.append((seed, *w, len(schedule), np.median(rt[-fifth:]) / np.median(rt[:fifth])))
        # the replay really is the closed loop's stimulation, on the same wiring
        assert replay.network.syn_post.tolist() == closed.network.syn_post.tolist()
    table = np.array(rows)
    print("\nseed  stop_on_output  start_on_output  yoked  trials  reaction_time_ratio")
    for r in rows:
        print(f"{r[0]:4d}  {r[1]:14.2f}  {r[2]:15.2f}  {r[3]:5.2f}  {r[4]:6d}  {r[5]:6.2f}")
    diff = table[:, 1] - table[:, 3]
    wins = int((diff > 0).sum())
    p_sign = sum(math.comb(10, k) for k in range(wins, 11)) / 2**10
    print(
        f"closed - yoked: mean {diff.mean():+.2f}, sd {diff.std(ddof=1):.2f}, "
        f"positive in {wins}/10 seeds (one-sided sign test p = {p_sign:.3f})"
    )
    for seed, w_closed, w_inverse, w_yoked, *_ in rows:
        assert w_closed > w_inverse, f"seed {seed}: closed {w_closed:.2f} <= inverse"
        assert w_yoked > w_inverse, f"seed {seed}: yoked {w_yoked:.2f} <= inverse"
