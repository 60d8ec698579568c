"""What the MEA's electrodes record from the culture, sample by sample.

`MEARecorder` advances the culture in step with a sampled data stream (rate fs, samples per
1 ms culture step = fs / 1000) and turns every spike into detections: one per electrode that
sees the neuron (electrodes.neuron_recording), at sample

    (culture step - step of sample 0) * fs / 1000 + jitter,   jitter uniform in [0, fs/1000)

so binning the samples by 1 ms recovers the culture's step, and with the neuron's peak
amplitude and unit id on that electrode. `wideband_uv` renders the signal of chosen
electrodes: Gaussian noise of `electrode_noise_uv` rms plus the spike template of every
detection (electrodes.spike_template, negative peak = -amplitude).

The jitter and the noise come from the recorder's own Generator, so recording never changes
what the culture does.
"""

from __future__ import annotations

import numpy as np

from simulators.culture.culture import Culture
from simulators.culture.electrodes import add_spike_waveforms, spike_template

DETECTION_DTYPE = np.dtype([("s", "i8"), ("e", "i4"), ("a", "f8"), ("u", "i4")])
"""sample, electrode, peak amplitude (uV, magnitude of the negative peak), unit id."""


class MEARecorder:
    def __init__(self, culture: Culture, sample_rate_hz: int, rng: np.random.Generator) -> None:
        if sample_rate_hz % 1000:
            raise ValueError(
                f"sample_rate_hz = {sample_rate_hz} must be a whole number of samples per "
                "1 ms culture step"
            )
        self.culture = culture
        self.sample_rate_hz = int(sample_rate_hz)
        self.samples_per_step = self.sample_rate_hz // 1000
        self._rng = rng
        self._template = spike_template(self.sample_rate_hz)
        self.step_offset = culture.steps_done
        self._pending = np.zeros(0, DETECTION_DTYPE)
        self._tail = np.zeros(0, DETECTION_DTYPE)

    @property
    def template_samples(self) -> int:
        return int(self._template.shape[0])

    def restart(self) -> None:
        """Sample 0 is now (the culture's current step); forget pending detections."""
        self.step_offset = self.culture.steps_done
        self._pending = np.zeros(0, DETECTION_DTYPE)
        self._tail = np.zeros(0, DETECTION_DTYPE)

    def culture_step(self, sample: int) -> int:
        """The culture step a sample falls in."""
        return self.step_offset + sample // self.samples_per_step

    def advance(self, end_sample: int) -> None:
        """Simulate the culture through the step that contains sample end_sample - 1."""
        target = self.step_offset - (-end_sample // self.samples_per_step)
        if target > self.culture.steps_done:
            self.culture.run(target - self.culture.steps_done)
            neurons, steps = self.culture.last_run_spikes()
            self._add(neurons, steps)

    def _add(self, neurons: np.ndarray, steps: np.ndarray) -> None:
        if neurons.size == 0:
            return
        rec = self.culture.neuron_recording
        counts = rec.start[neurons + 1] - rec.start[neurons]
        total = int(counts.sum())
        jitter = self._rng.integers(0, self.samples_per_step, size=neurons.size)
        if total == 0:
            return
        first = np.repeat(rec.start[neurons], counts)
        within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        idx = first + within
        det = np.zeros(total, DETECTION_DTYPE)
        det["s"] = np.repeat((steps - self.step_offset) * self.samples_per_step + jitter, counts)
        det["e"] = rec.electrodes[idx]
        det["a"] = rec.amplitude_uv[idx]
        det["u"] = rec.unit_id[idx]
        merged = np.concatenate([self._pending, det])
        self._pending = merged[np.argsort(merged["s"], kind="stable")]

    def take(self, end_sample: int) -> np.ndarray:
        """Detections before end_sample (sorted by sample), removed from the pending ones."""
        now = self._pending["s"] < end_sample
        taken = self._pending[now]
        self._pending = self._pending[~now]
        return taken

    def wideband_uv(
        self, first_sample: int, detections: np.ndarray, electrodes: list[int], out: np.ndarray
    ) -> None:
        """Signal of `electrodes` (columns of out, (n, len(electrodes)) float64) over samples
        first_sample .. first_sample + n - 1: noise plus the spikes of `detections` (the ones
        taken for these samples) and of earlier ones whose waveform reaches into them.
        Call once per block, in order."""
        n = out.shape[0]
        noise = self.culture.config.electrode_noise_uv
        out[...] = self._rng.standard_normal(out.shape) * noise
        spikes = np.concatenate([self._tail, detections])
        spikes = spikes[np.isin(spikes["e"], electrodes)]
        for j, e in enumerate(electrodes):
            mine = spikes[spikes["e"] == e]
            if mine.size:
                add_spike_waveforms(
                    out,
                    first_sample,
                    np.ascontiguousarray(mine["s"]),
                    np.full(mine.size, j, np.int64),
                    np.ascontiguousarray(mine["a"]),
                    self._template,
                )
        self._tail = spikes[spikes["s"] >= first_sample + n - self.template_samples]
