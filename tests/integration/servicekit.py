"""Running the sender and receiver services on threads inside an integration test."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from diode.services.receiver import ReceiverService
from diode.services.sender import SenderService

#: seconds a test waits for the services to reach a state before it fails
DEADLINE = 40.0


class Running:
    """A service's ``run`` on a thread; ``stop`` joins it and re-raises what it raised."""

    def __init__(self, service: SenderService | ReceiverService) -> None:
        self.service = service
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "service did not stop"
        if self.error is not None:
            raise self.error


def wait_for(condition: Callable[[], bool], what: str, *running: Running) -> None:
    """Until ``condition()`` holds; fails at once if a service failed, or after ``DEADLINE``
    with every service's stats."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if condition():
            return
        for r in running:
            if r.error is not None:
                raise AssertionError(f"waiting for {what}: a service failed") from r.error
        time.sleep(0.05)
    raise AssertionError(
        f"timed out waiting for {what}: " + "; ".join(str(r.service.stats) for r in running)
    )
