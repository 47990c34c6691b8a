"""``diode sender run`` and ``diode receiver run``: start the two long-running programs."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Protocol, TypeVar

import click

from diode.config import load_receiver_config, load_sender_config
from diode.errors import DiodeError, PolicyValidationError

_CONFIG = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file (see sender/diode.example.toml, receiver/diode.example.toml).",
)
_LOG = click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log verbosity on stderr.",
)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, PolicyValidationError):
        return "invalid policy: " + "; ".join(f"{f}:{n}: {m}" for f, n, m in exc.problems)
    return " ".join(str(exc).split())


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


_Stats = TypeVar("_Stats", covariant=True)
_S = TypeVar("_S")


class _Service(Protocol[_Stats]):
    def stop(self) -> None: ...

    def run(self) -> _Stats: ...


class _Reloadable(Protocol):
    def request_reload(self) -> None: ...


def _start(name: str, make: Callable[[], _S]) -> _S:
    try:
        return make()
    except (DiodeError, OSError) as exc:
        raise click.ClickException(f"{name} cannot start: {_one_line(exc)}") from exc


def _reload_on_hup(service: _Reloadable) -> None:
    def on_hup(_sig: int, _frame: FrameType | None) -> None:
        service.request_reload()

    signal.signal(signal.SIGHUP, on_hup)


def _run_until_stopped(name: str, service: _Service[_Stats]) -> _Stats:
    """Run ``service`` until SIGTERM or SIGINT asks it to stop; its stats."""

    def on_stop(_sig: int, _frame: FrameType | None) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    try:
        return service.run()
    except DiodeError as exc:
        raise click.ClickException(f"{name} stopped: {_one_line(exc)}") from exc


@click.group("sender")
def sender() -> None:
    """The OT-side program: Kafka -> policy -> signed, encrypted FEC datagrams -> diode."""


@sender.command("run")
@_CONFIG
@_LOG
def sender_run(config_path: Path, log_level: str) -> None:
    """Run the sender until SIGTERM or SIGINT.

    It consumes the topics the policy forwards (or [kafka] topics), judges every record,
    sends what may cross at the configured link rate and commits OT offsets only once the
    records are on the wire and covered by signed manifests. Refused and quarantined records
    are audited, never sent.

    \b
    Signals:
      SIGHUP            reload the policy (a broken file is rejected, the old one kept)
      SIGTERM, SIGINT   flush, final commit, audit service_stop, exit

    \b
    Environment overrides, e.g.:
      DIODE_SENDER__UDP__PORT=5000 DIODE_SENDER__KAFKA__BOOTSTRAP_SERVERS=ot:9092
    """
    from diode.services.sender import SenderService

    _logging(log_level)
    service = _start("sender", lambda: SenderService(load_sender_config(config_path)))

    _reload_on_hup(service)
    stats = _run_until_stopped("sender", service)
    click.echo(
        f"sender stopped: {stats.consumed} consumed, {stats.forwarded + stats.alerted} sent, "
        f"{stats.dropped + stats.blocked + stats.too_large} refused, "
        f"{stats.quarantined} quarantined",
        err=True,
    )


@click.group("receiver")
def receiver() -> None:
    """The IT-side program: diode -> authenticated, rebuilt records -> IT Kafka."""


@receiver.command("run")
@_CONFIG
@_LOG
def receiver_run(config_path: Path, log_level: str) -> None:
    """Run the receiver until SIGTERM or SIGINT.

    At start it reads the last delivered source offsets from the IT topics' provenance
    headers, so records a restarted sender sends again are skipped, not duplicated. Every
    record is re-checked against the receiver's own allow-list; losses (FEC could not
    rebuild, spool full, produce failed) are audited as gaps. Records wait in the spool
    ([spool] path: on disk) until IT Kafka acknowledges them, so IT Kafka may go down.

    \b
    Signals:
      SIGHUP            reload policy_file (a broken file is rejected, the old one kept);
                        a changed file is also picked up on its own within a second
      SIGTERM, SIGINT   hand the spool to Kafka for [spool] stop_flush_s, keep the rest on
                        disk for the next start (or audit it as gaps: memory spool), exit

    \b
    Environment overrides, e.g.:
      DIODE_RECEIVER__UDP__PORT=5000 DIODE_RECEIVER__KAFKA__BOOTSTRAP_SERVERS=it:9092
    """
    from diode.services.receiver import ReceiverService

    _logging(log_level)
    service = _start("receiver", lambda: ReceiverService(load_receiver_config(config_path)))
    _reload_on_hup(service)
    stats = _run_until_stopped("receiver", service)
    click.echo(
        f"receiver stopped: {stats.delivered} delivered, {stats.duplicates_skipped} duplicates "
        f"skipped, {stats.refused} refused, {stats.gaps} gap entries",
        err=True,
    )
