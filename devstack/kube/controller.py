"""The loop every emulated controller runs: wake on a store change (or after a timeout), run each sync step,
keep going when one fails (its error goes to the emulator's log), pause briefly, until stopped."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api import Api


class Controller:
    """A daemon thread over ``steps()``; subclasses say what the steps are and how often they wake."""

    name = "controller"
    wait_s = 1.0  # the longest wait for a store change before syncing anyway
    pause_s = 0.1  # after each round, so a burst of changes is synced in few rounds

    def __init__(self, api: Api) -> None:
        self.api = api
        self.store = api.store
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def steps(self) -> Sequence[Callable[[], None]]:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        seen = -1
        while not self._stop.is_set():
            self.store.wait(seen, timeout=self.wait_s)
            seen = self.store.resource_version
            for step in self.steps():
                try:
                    step()
                except Exception as exc:  # keep the controller alive; the log shows what went wrong
                    print(f"{self.name}: {step.__name__}: {type(exc).__name__}: {exc}", flush=True)
            time.sleep(self.pause_s)
