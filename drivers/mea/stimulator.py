"""The MEA stimulator: one Stimulator role, vendor back ends behind a small interface.

Vendors differ in how stimulation is programmed and fired, but the shape is common:
parameters are downloaded ("uploaded" in Intan's words) while the device is idle, then
triggered (Intan RHX: uploads only while the controller is stopped, triggers by F-keys or
digital inputs; Multi Channel Systems STG/MEA2100: download then trigger through the .NET
DLL; MaxWell MaxOne: sequences prepared through `maxlab`, then sent; A-M Systems 4100: ASCII
program over serial/TCP, then trigger). So a back end provides:

    capabilities()        StimulatorCapabilities (known before connecting, from the rig file)
    trigger_slots()       names of its independent triggers (RHX: F1..F8, DigitalIn lines)
    connect() / disconnect() / reconnect() / connected
    can_program_now()     whether programming is allowed right now (RHX: only while stopped)
    program(assignments)  download stimuli, each bound to a trigger slot
    ready_to_fire() / arm()   whether triggers act now; arm makes them act (RHX: run mode)
    fire(slot, action)    action "pulse" (one trigger edge), "on" / "off" (held, for stimuli
                          that repeat while held); returns a FireReceipt with host and device
                          time
    disarm()              no stimulation can happen afterwards (safe state)
    commands_sent         count of commands that left the host (tests prove refusals send none)

MEAStimulator does the rest, the same for every vendor: validation against the capabilities
(LimitError before anything is sent), binding stimuli to slots, refusing to stimulate while
disconnected (DeviceStateError, nothing sent), turning a broken connection during a trigger
into StimulationFailed (the attempt is recorded with status "failed"), and reconnection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

from drivers.errors import DeviceError, DeviceStateError, DeviceTimeout, LimitError
from drivers.mea.errors import ConnectionLost, StimulationFailed
from drivers.mea.stimulus import MEAStimulus, StimulatorCapabilities, validate_stimulus
from drivers.roles import StimulusRecord, Stimulator

log = logging.getLogger(__name__)

FIRE_ACTIONS = ("pulse", "on", "off")
RECENT_RECORDS = 1000
"""Records kept by the stimulator (sessions record every stimulus themselves)."""


@dataclass(frozen=True)
class FireReceipt:
    """When a trigger left the host, and when the device will start the stimulus.

    device_time_s is the device's own estimate at the moment it took the trigger (for RHX:
    its current timestamp plus the post-trigger delay); the onset read back from the data
    stream confirms it (SpikeBlock.onsets)."""

    host_time_s: float
    device_time_s: float
    device_sample: int | None = None


class MEABackend(ABC):
    """What MEAStimulator needs from a vendor back end (see the module docstring)."""

    name: str = "MEA back end"

    @abstractmethod
    def capabilities(self) -> StimulatorCapabilities: ...

    @abstractmethod
    def trigger_slots(self) -> tuple[str, ...]: ...

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def disconnect(self) -> None: ...

    @abstractmethod
    def reconnect(self) -> None: ...

    @property
    @abstractmethod
    def connected(self) -> bool: ...

    @abstractmethod
    def can_program_now(self) -> bool: ...

    @abstractmethod
    def program(self, assignments: Sequence[tuple[str, MEAStimulus]]) -> None: ...

    @abstractmethod
    def ready_to_fire(self) -> bool: ...

    @abstractmethod
    def arm(self) -> None: ...

    @abstractmethod
    def fire(self, slot: str, action: str) -> FireReceipt: ...

    @abstractmethod
    def disarm(self) -> None: ...

    @property
    @abstractmethod
    def commands_sent(self) -> int: ...

    def snapshot(self) -> dict[str, Any]:
        return {}


class MEAStimulator(Stimulator):
    """Stimulator role for MEAs: validate -> program (while the device allows) -> trigger.

    `prepare(stimuli)` programs a set of stimuli at once (call it in the protocol's setup,
    before acquisition starts: RHX cannot program while running). `stimulate(stimulus)` fires
    a prepared stimulus, programming it first when the device allows it now. With
    `auto_arm` (default), a device that is not armed is armed first (RHX: set running), so
    the stimulator also works alone, open loop. `start` / `stop` hold a stimulus with
    `repeat_while_held` on and off (e.g. LSA's stimulation until the output fires).
    """

    def __init__(
        self, backend: MEABackend, *, name: str | None = None, auto_arm: bool = True
    ) -> None:
        super().__init__(name or f"MEA stimulator ({backend.name})")
        self.backend = backend
        self.auto_arm = auto_arm
        self._lock = threading.RLock()
        self._slots: dict[MEAStimulus, str] = {}
        self._held: set[str] = set()
        self.delivered = 0
        self.records: deque[StimulusRecord] = deque(maxlen=RECENT_RECORDS)
        self.failed: list[StimulusRecord] = []

    # -- validation ------------------------------------------------------------------------------
    @property
    def capabilities(self) -> StimulatorCapabilities:
        return self.backend.capabilities()

    def validate(self, stimulus: MEAStimulus) -> MEAStimulus:
        return validate_stimulus(stimulus, self.backend.capabilities())

    # -- programming -----------------------------------------------------------------------------
    def prepare(self, stimuli: Sequence[MEAStimulus]) -> list[MEAStimulus]:
        """Validate every stimulus (LimitError before anything is sent), bind each to a
        trigger slot and program them all; returns them as they will be delivered. Stimuli
        prepared earlier stay prepared. Each electrode has one parameter set, so two different
        stimuli cannot share an electrode."""
        with self._lock:
            self.require_open()
            validated = [self.validate(s) for s in stimuli]
            table = dict(self._slots)
            for stim in validated:
                if stim not in table:
                    table[stim] = ""
            owner: dict[str, MEAStimulus] = {}
            for stim in table:
                for e in stim.electrodes:
                    if e in owner and owner[e] != stim:
                        raise LimitError(
                            f"electrode {e!r} is used by two different stimuli "
                            f"({owner[e].summary()!r} and {stim.summary()!r}); "
                            f"{self.backend.name} holds one parameter set per electrode"
                        )
                    owner[e] = stim
            free = [s for s in self.backend.trigger_slots() if s not in table.values()]
            for stim in table:
                if not table[stim]:
                    if not free:
                        raise LimitError(
                            f"{len(table)} different stimuli exceed the "
                            f"{len(self.backend.trigger_slots())} trigger slots of "
                            f"{self.backend.name} ({', '.join(self.backend.trigger_slots())})"
                        )
                    table[stim] = free.pop(0)
            if table == self._slots:
                return validated
            self._require_connected()
            if not self.backend.can_program_now():
                raise DeviceStateError(
                    f"{self.name}: {self.backend.name} cannot be programmed now (RHX uploads "
                    "stimulation parameters only while stopped): prepare all stimuli before "
                    "acquisition starts"
                )
            self._send(lambda: self.backend.program([(slot, s) for s, slot in table.items()]), None)
            self._slots = table
            return validated

    @property
    def prepared(self) -> dict[MEAStimulus, str]:
        return dict(self._slots)

    # -- stimulation -----------------------------------------------------------------------------
    def stimulate(self, stimulus: MEAStimulus) -> StimulusRecord:
        """Trigger one stimulus (one edge); returns when and how it fired."""
        return self._fire(stimulus, "pulse")

    def start(self, stimulus: MEAStimulus) -> StimulusRecord:
        """Hold a `repeat_while_held` stimulus on (until `stop`)."""
        return self._fire(stimulus, "on")

    def stop(self, stimulus: MEAStimulus) -> StimulusRecord:
        """Release a held stimulus."""
        return self._fire(stimulus, "off")

    def _fire(self, stimulus: MEAStimulus, action: str) -> StimulusRecord:
        with self._lock:
            self.require_open()
            stim = self.validate(stimulus)
            if action in ("on", "off") and not stim.repeat_while_held:
                raise LimitError(
                    f"{action!r}: only stimuli with repeat_while_held=True can be "
                    "held on and off; use stimulate() for a single trigger"
                )
            self._require_connected()
            slot = self._slots.get(stim)
            if slot is None:
                self.prepare([stim])
                slot = self._slots[stim]
            if not self.backend.ready_to_fire():
                if not self.auto_arm:
                    raise DeviceStateError(
                        f"{self.name}: {self.backend.name} is not armed "
                        "(RHX: not running); start acquisition first"
                    )
                self._send(self.backend.arm, stim)
            receipt = self._send(lambda: self.backend.fire(slot, action), stim)
            if action == "on":
                self._held.add(slot)
            elif action == "off":
                self._held.discard(slot)
            record = StimulusRecord(
                host_time_s=receipt.host_time_s,
                device_time_s=receipt.device_time_s,
                description=self._describe(stim, slot, action, "sent", receipt),
            )
            self.records.append(record)
            if action != "off":
                self.delivered += 1
            return record

    def _describe(
        self, stim: MEAStimulus, slot: str, action: str, status: str, receipt: FireReceipt | None
    ) -> dict[str, Any]:
        return {
            **stim.to_dict(),
            "summary": stim.summary(),
            "slot": slot,
            "action": action,
            "status": status,
            "device": self.backend.name,
            "device_sample": None if receipt is None else receipt.device_sample,
            "device_time_basis": "device estimate at trigger (confirm with read-back onsets)",
        }

    def _require_connected(self) -> None:
        if not self.backend.connected:
            raise DeviceStateError(
                f"{self.name}: {self.backend.name} is disconnected; nothing was sent. "
                "Call reconnect() (the device may have dropped the connection)"
            )

    def _send(self, action: Any, stim: MEAStimulus | None) -> Any:
        """Run a back-end call; a broken connection becomes StimulationFailed (recorded)."""
        try:
            return action()
        except (ConnectionLost, DeviceTimeout, OSError) as exc:
            host = time.monotonic()
            if stim is None and isinstance(exc, DeviceTimeout):
                raise
            if stim is None:
                raise ConnectionLost(
                    f"{self.name}: connection lost while programming: {exc}"
                ) from exc
            record = StimulusRecord(
                host_time_s=host,
                device_time_s=float("nan"),
                description={
                    **stim.to_dict(),
                    "summary": stim.summary(),
                    "status": "failed",
                    "error": str(exc),
                    "device": self.backend.name,
                },
            )
            self.failed.append(record)
            raise StimulationFailed(
                f"{self.name}: stimulation failed, the connection to {self.backend.name} "
                f"broke or did not answer ({exc}); the stimulus may not have been delivered. "
                "Call reconnect()",
                record,
            ) from exc

    def reconnect(self) -> None:
        """Re-establish the connection (the back end checks what is still programmed)."""
        with self._lock:
            self.require_open()
            self.backend.reconnect()
            if not self.backend_still_programmed():
                self._slots = {}
            self._held.clear()

    def backend_still_programmed(self) -> bool:
        check = getattr(self.backend, "verify_programmed", None)
        return bool(check()) if check is not None else False

    # -- Device hooks ------------------------------------------------------------------------------
    def _open(self) -> None:
        self.backend.connect()

    def _close(self) -> None:
        self._slots = {}
        self.backend.disconnect()

    def _safe(self) -> None:
        if not self.backend.connected:
            log.warning(
                "%s: disconnected, cannot disarm %s (it keeps what it was last told)",
                self.name,
                self.backend.name,
            )
            return
        try:
            self.backend.disarm()
        except DeviceError:
            log.exception("%s: disarm failed", self.name)
            raise
        finally:
            self._held.clear()
            self._slots = {}

    def _snapshot(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "capabilities": self.backend.capabilities().to_dict(),
            "prepared": [
                {"slot": slot, "stimulus": s.to_dict(), "summary": s.summary()}
                for s, slot in self._slots.items()
            ],
            "delivered": self.delivered,
            "failed": len(self.failed),
            **self.backend.snapshot(),
        }
