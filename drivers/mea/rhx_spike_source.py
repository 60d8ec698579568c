"""RHX spike source: spikes, stimulation read-back and wideband data from RHX's TCP streams.

The waveform stream (port 5001) is the clock: a block is complete when its 128 x
`blocks_per_write` frames have arrived. The spike stream (port 5002) brings 14-byte records;
records up to the block's end belong to it (a record that arrives after its waveform block,
possible with real RHX, which writes the waveform first, is delivered with the next block
with its true timestamp and counted in `late_spikes`). The STIM band of every electrode
(on by default) shows the stimulation the controller really delivered: pulse onsets on the
device clock, in `SpikeBlock.onsets()`. See intan_rhx.py for the shared command client.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from typing import Any, Sequence

import numpy as np

from drivers.errors import DeviceError, DeviceNotFound, DeviceStateError, DeviceTimeout, LimitError
from drivers.mea.errors import ConnectionLost
from drivers.mea.intan_rhx import RHXClient, default_channels
from drivers.mea.rhx_protocol import (
    AMPLIFIER_UV_PER_BIT,
    BAND_ITEMS,
    FRAMES_PER_BLOCK,
    SPIKE_RECORD_BYTES,
    WaveformLayout,
    decode_spikes,
    decode_waveform_blocks,
    execute_command,
    set_command,
    stim_onsets,
)
from drivers.mea.spikes import SpikeBlock, SpikeSource

log = logging.getLogger(__name__)


class RHXSpikeSource(SpikeSource):
    """Spikes (and stimulation read-back, optionally wideband data) from RHX's TCP streams.

    electrodes: electrode name -> RHX channel (default: the 64 channels A-000 .. B-031).
    blocks_per_write: RHX's TCPNumberDataBlocksPerWrite (1 .. 100): 1 gives the lowest
      latency (128 frames, 4.3 ms at 30 kHz per block).
    wideband: electrodes whose wideband signal is streamed (uV in SpikeBlock.wideband_uv).
    stim_readback: stream the STIM band of every electrode (onsets on the device clock).
    spike_threshold_uv: if given, set as SpikeThresholdMicroVolts on every channel.
    """

    def __init__(
        self,
        client: RHXClient,
        *,
        electrodes: dict[str, str] | None = None,
        blocks_per_write: int = 1,
        wideband: Sequence[str] = (),
        stim_readback: bool = True,
        spike_threshold_uv: float | None = None,
        sample_rate_hz: float = 30000.0,
        name: str | None = None,
    ) -> None:
        super().__init__(name or "RHX spike source")
        if not 1 <= int(blocks_per_write) <= 100:
            raise LimitError(
                f"blocks_per_write = {blocks_per_write} is outside the allowed "
                "range [1, 100] (RHX TCPNumberDataBlocksPerWrite)"
            )
        self.client = client
        self._electrodes = dict(electrodes) if electrodes else {c: c for c in default_channels(64)}
        self._names = tuple(self._electrodes)
        self._channels = [self._electrodes[e].upper() for e in self._names]
        for e in wideband:
            if e not in self._electrodes:
                raise LimitError(f"wideband electrode {e!r} is not one of this source's electrodes")
        self.blocks_per_write = int(blocks_per_write)
        self.wideband = tuple(wideband)
        self.stim_readback = bool(stim_readback)
        self.spike_threshold_uv = spike_threshold_uv
        self._rate = float(sample_rate_hz)
        enabled: dict[str, list[str]] = {ch: [] for ch in self._channels}
        for e in self.wideband:
            enabled[self._electrodes[e].upper()].append("WIDE")
        if self.stim_readback:
            for ch in self._channels:
                enabled[ch].append("STIM")
        if not any(enabled.values()):
            enabled[self._channels[0]].append("STIM")  # the waveform stream is the clock
        self.layout = WaveformLayout.from_enabled({k: v for k, v in enabled.items() if v})
        self._wide_cols = [
            self.layout.words.index((self._electrodes[e].upper(), "WIDE")) for e in self.wideband
        ]
        stim_chans, self._stim_cols = self.layout.columns("STIM")
        self._stim_electrodes = [self._channels.index(ch) for ch in stim_chans]
        self._stim_channels = stim_chans
        self._channel_index = {ch.encode("ascii"): k for k, ch in enumerate(self._channels)}
        n = self.samples_per_block
        self._chunk = bytearray(self.blocks_per_write * self.layout.block_bytes)
        self._timestamps = np.zeros(n, np.int64)
        self._words = np.zeros((n, self.layout.n_words), np.uint16)
        self._stim_prev_on = np.zeros(len(self._stim_cols), bool)
        self._pending = np.zeros(0, dtype=[("e", "i4"), ("s", "i8"), ("u", "u1")])
        self._spike_buffer = b""
        self._wave: socket.socket | None = None
        self._spike: socket.socket | None = None
        self._started = False
        self._next_sample: int | None = None
        self._index = 0
        self.unknown_spikes = 0
        self.blocks_read = 0

    # -- role properties --
    @property
    def electrodes(self) -> tuple[str, ...]:
        return self._names

    @property
    def sample_rate_hz(self) -> float:
        return self._rate

    @property
    def samples_per_block(self) -> int:
        return self.blocks_per_write * FRAMES_PER_BLOCK

    def new_block(self) -> SpikeBlock:
        return SpikeBlock(self._rate, self.samples_per_block, len(self.wideband))

    # -- setup --
    def _open(self) -> None:
        self.client.acquire()
        try:
            if self.client.sample_rate_hz != self._rate:
                raise DeviceError(
                    f"RHX samples at {self.client.sample_rate_hz:g} Hz but the "
                    f"rig file says {self._rate:g} Hz"
                )
            if self.client.running:
                raise DeviceStateError(
                    "RHX is running: stop it before configuring the data "
                    "streams (TCPNumberDataBlocksPerWrite is refused while "
                    "running)"
                )
            self._configure()
            self._connect_streams()
        except BaseException:
            self._close_streams()
            self.client.release()
            raise

    def _configure(self) -> None:
        commands = [
            execute_command("clearalldataoutputs"),
            set_command("TCPNumberDataBlocksPerWrite", self.blocks_per_write),
        ]
        for ch in self._channels:
            commands.append(set_command(f"{ch}.TCPDataOutputEnabledSpike", True))
            if self.spike_threshold_uv is not None:
                commands.append(
                    set_command(
                        f"{ch}.SpikeThresholdMicroVolts", int(round(self.spike_threshold_uv))
                    )
                )
        for ch, band in self.layout.words:
            commands.append(set_command(f"{ch}.{BAND_ITEMS[band]}", True))
        self.client.command(*commands)

    def _connect_streams(self) -> None:
        c = self.client
        c.command(
            execute_command("connecttcpwaveformdataoutput"),
            execute_command("connecttcpspikedataoutput"),
        )
        wave_port = int(c.get("tcpwaveformdataoutputport"))
        spike_port = int(c.get("tcpspikedataoutputport"))
        self._wave = self._connect_data(wave_port, "waveform")
        self._spike = self._connect_data(spike_port, "spike")
        self._spike.setblocking(False)
        # RHX accepts data connections asynchronously: data produced before it did would
        # never reach us, so wait until it reports both connected
        deadline = time.monotonic() + self.client.timeout_s
        while True:
            status = c.command(
                "get tcpwaveformdataoutputconnectionstatus",
                "get tcpspikedataoutputconnectionstatus",
            )
            if all(v.split()[-1] == "Connected" for v in status):
                return
            if time.monotonic() > deadline:
                raise DeviceTimeout(
                    f"{self.name}: RHX did not accept the data connections within "
                    f"{self.client.timeout_s:g} s (status: {', '.join(status)})"
                )
            time.sleep(0.002)

    def _connect_data(self, port: int, what: str) -> socket.socket:
        deadline = time.monotonic() + self.client.timeout_s
        while True:
            try:
                sock = socket.create_connection(
                    (self.client.host, port), timeout=self.client.timeout_s
                )
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
                sock.settimeout(self.client.timeout_s)
                return sock
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise DeviceNotFound(
                        f"RHX {what} data port {self.client.host}:{port} did "
                        f"not accept a connection ({exc})"
                    ) from exc
                time.sleep(0.01)

    def _close_streams(self) -> None:
        for sock in (self._wave, self._spike):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        self._wave = self._spike = None

    def reconnect(self) -> None:
        """New command and data connections after the old ones broke. Acquisition resumes
        where RHX is now; the samples missed are reported as lost_samples_before."""
        self._close_streams()
        try:
            self.client.refresh_run_mode()  # the command channel may have survived
        except (ConnectionLost, DeviceStateError):
            self.client.reconnect()
        self._connect_streams()
        self._spike_buffer = b""
        self._pending = self._pending[:0]
        self._stim_prev_on[:] = False

    # -- acquisition --
    def start(self) -> None:
        self.require_open()
        self.client.set_run_mode("run")
        self._started = True
        self._next_sample = None

    def stop(self) -> None:
        if self._started and self.client.connected:
            try:
                self.client.set_run_mode("stop")
            except ConnectionLost:
                log.warning("%s: connection lost while stopping", self.name)
        self._started = False

    def read_block(self, block: SpikeBlock) -> SpikeBlock:
        if not self._started:
            raise DeviceStateError(f"{self.name}: call start() before read_block()")
        if self._wave is None:
            raise DeviceStateError(f"{self.name}: data streams are disconnected; call reconnect()")
        expected_spike_bytes = self.client.pace() if self.client.pace is not None else None
        self._receive_chunk()
        host = time.monotonic()
        n = decode_waveform_blocks(
            memoryview(self._chunk), self.layout, self._timestamps, self._words
        )
        raw = self._timestamps[:n]
        samples = self.client.session_sample(raw)
        first = int(samples[0])
        block.clear()
        block.index = self._index
        block.first_sample = first
        block.n_samples = n
        block.host_time_s = host
        if self._next_sample is not None and first > self._next_sample:
            block.lost_samples_before = first - self._next_sample
        self._next_sample = first + n
        end = first + n
        self._take_spikes(block, end, expected_spike_bytes)
        if self._stim_cols:
            lead = np.array([self.client.lead_negative.get(ch, True) for ch in self._stim_channels])
            cols, onsets = stim_onsets(
                self._words[:n, self._stim_cols], first, lead, self._stim_prev_on
            )
            for c, s in zip(cols.tolist(), onsets.tolist()):
                block.add_onsets(self._stim_electrodes[c], np.array([s], np.int64))
        if self._wide_cols:
            np.multiply(
                self._words[:n, self._wide_cols].astype(np.float32) - 32768.0,
                AMPLIFIER_UV_PER_BIT,
                out=block.wideband_uv[:n],
            )
        self._index += 1
        self.blocks_read += 1
        return block

    def _receive_chunk(self) -> None:
        assert self._wave is not None
        view = memoryview(self._chunk)
        got = 0
        while got < len(view):
            try:
                k = self._wave.recv_into(view[got:])
            except socket.timeout as exc:
                raise DeviceTimeout(
                    f"{self.name}: no waveform data for "
                    f"{self.client.timeout_s:g} s (is RHX running?)"
                ) from exc
            except OSError as exc:
                self._close_streams()
                raise ConnectionLost(f"{self.name}: waveform stream broke ({exc})") from exc
            if k == 0:
                self._close_streams()
                raise ConnectionLost(f"{self.name}: RHX closed the waveform stream")
            got += k

    def _drain_spikes(self, expected: int | None) -> bytes:
        """Spike bytes received so far (whole records); with `expected` (lock-step), wait
        until at least that many new bytes arrived."""
        assert self._spike is not None
        parts = [self._spike_buffer]
        if expected:
            self._spike.settimeout(self.client.timeout_s)
            got = 0
            try:
                while got < expected:
                    data = self._spike.recv(expected - got)
                    if not data:
                        self._close_streams()
                        raise ConnectionLost(f"{self.name}: RHX closed the spike stream")
                    parts.append(data)
                    got += len(data)
            except socket.timeout as exc:
                raise DeviceTimeout(
                    f"{self.name}: {expected - got} spike bytes announced by "
                    "the pacer did not arrive"
                ) from exc
            except OSError as exc:
                self._close_streams()
                raise ConnectionLost(f"{self.name}: spike stream broke ({exc})") from exc
            finally:
                if self._spike is not None:
                    self._spike.setblocking(False)
        while True:
            ready, _, _ = select.select([self._spike], [], [], 0)
            if not ready:
                break
            try:
                data = self._spike.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as exc:
                self._close_streams()
                raise ConnectionLost(f"{self.name}: spike stream broke ({exc})") from exc
            if not data:
                self._close_streams()
                raise ConnectionLost(f"{self.name}: RHX closed the spike stream")
            parts.append(data)
        data = b"".join(parts)
        whole = len(data) - len(data) % SPIKE_RECORD_BYTES
        self._spike_buffer = data[whole:]
        return data[:whole]

    def _take_spikes(self, block: SpikeBlock, end: int, expected: int | None) -> None:
        data = self._drain_spikes(expected)
        pending = self._pending
        if data:
            records = decode_spikes(data)
            keys = records["name"]
            electrodes = np.array(
                [self._channel_index.get(bytes(k).upper(), -1) for k in keys], dtype=np.int32
            )
            known = electrodes >= 0
            self.unknown_spikes += int((~known).sum())
            new = np.zeros(int(known.sum()), dtype=pending.dtype)
            new["e"] = electrodes[known]
            new["s"] = self.client.session_sample(records["timestamp"][known].astype(np.int64))
            new["u"] = records["id"][known]
            pending = np.concatenate([pending, new]) if pending.size else new
        if pending.size:
            now = pending["s"] < end
            taken = pending[now]
            block.add_spikes(taken["e"], taken["s"], taken["u"])
            block.late_spikes = int((taken["s"] < block.first_sample).sum())
            self._pending = pending[~now]

    def _close(self) -> None:
        self._close_streams()
        self._started = False
        self.client.release()

    def _safe(self) -> None:
        self.stop()

    def _snapshot(self) -> dict[str, Any]:
        return {
            "electrodes": dict(self._electrodes),
            "blocks_per_write": self.blocks_per_write,
            "wideband": list(self.wideband),
            "stim_readback": self.stim_readback,
            "spike_threshold_uv": self.spike_threshold_uv,
            "sample_rate_hz": self._rate,
            "blocks_read": self.blocks_read,
            "unknown_spikes": self.unknown_spikes,
        }
