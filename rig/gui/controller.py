"""One experiment at a time, run in a worker thread, steered and watched from the GUI.

    idle --start()--> running --(run_experiment returns)--> finished  (result: RunResult)
                              \\-(error before a session existed)--> failed  (error: text)
    finished / failed --start()--> running

`run_experiment` owns the loop, the devices and the session; this class only starts it in a
plain thread with a fresh `LiveState` and `RunControl`, forwards the user's requests (stop,
pause, resume, safe-off, manual stimulus) and keeps the outcome. It never touches Qt, so the
worker thread never touches a widget: the window reads `live.snapshot()` and `poll()` on its
own timer. No Qt here also means it can be driven from scripts and tested without a display.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from drivers.errors import DeviceError
from rig.config import ConfigError, RigConfig
from rig.live import LiveState, RunControl
from rig.protocol import Protocol
from rig.run import RunResult, run_experiment

log = logging.getLogger(__name__)

#: errors whose message already says what to fix: shown without a traceback
USER_ERRORS = (ConfigError, DeviceError, FileExistsError, FileNotFoundError)


class ExperimentController:
    def __init__(self, config: RigConfig) -> None:
        self.config = config
        self.live: LiveState | None = None
        self.control: RunControl | None = None
        self.result: RunResult | None = None
        self.error: str | None = None
        self.protocol: Protocol | None = None
        self.duration_s = 0.0
        self.speed = "realtime"
        self._thread: threading.Thread | None = None
        self._reported = True

    # -- state -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def state(self) -> str:
        if self.running:
            return "running"
        if self.error is not None:
            return "failed"
        if self.result is not None:
            return "finished"
        return "idle"

    def poll(self) -> bool:
        """True once after a run has ended (finished or failed), for the GUI to show it."""
        if self._reported or self.running:
            return False
        self._reported = True
        return True

    # -- commands --------------------------------------------------------------------------
    def start(
        self,
        protocol: Protocol,
        *,
        duration_s: float,
        speed: str = "realtime",
        seed: int | None = None,
    ) -> None:
        """Start `protocol` (a fresh, validated instance) on the rig; returns at once."""
        if self.running:
            raise RuntimeError("an experiment is already running: stop it first")
        self.live = LiveState()
        self.control = RunControl()
        self.result = None
        self.error = None
        self.protocol = protocol
        self.duration_s = duration_s
        self.speed = speed
        self._reported = False
        live, control = self.live, self.control

        def work() -> None:
            try:
                self.result = run_experiment(
                    protocol,
                    self.config,
                    duration_s=duration_s,
                    speed=speed,
                    seed=seed,
                    live=live,
                    control=control,
                )
            except USER_ERRORS as exc:
                self.error = str(exc)
            except BaseException as exc:  # noqa: BLE001 - shown to the user, never lost
                log.exception("experiment failed")
                self.error = f"{type(exc).__name__}: {exc}"
            finally:
                if self.result is None and self.error is None:
                    self.error = "the experiment ended without a result"

        # not a daemon: if the window dies, the session is still closed and flushed
        self._thread = threading.Thread(target=work, name="looprig-experiment")
        self._thread.start()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the run has ended (True) or the timeout passed (False)."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self) -> None:
        if self.control is not None and self.running:
            self.control.stop()

    def pause(self) -> None:
        self._require_run().pause()

    def resume(self) -> None:
        self._require_run().resume()

    def safe_off(self) -> bool:
        """Stimulation off now (True), or False when no experiment is running."""
        if self.control is None or not self.running:
            return False
        self.control.safe_off()
        return True

    def manual_stimulate(self, stimulus: Any) -> Any:
        """Validate now (LimitError / RuntimeError with the message to show) and queue."""
        return self._require_run().manual_stimulate(stimulus)

    @property
    def paused(self) -> bool:
        return self.control is not None and self.control.paused.is_set()

    @property
    def safe_off_engaged(self) -> bool:
        return self.control is not None and self.control.safe_off_engaged.is_set()

    def _require_run(self) -> RunControl:
        if self.control is None or not self.running:
            raise RuntimeError("no experiment is running")
        return self.control
