"""``diode bench``: what this machine can carry, measured on one core before sizing a link."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import click

from diode import benchmark as bm
from diode.errors import BenchmarkError, ConfigError, PolicyError, PolicyValidationError
from diode.policy import load_policy
from diode.protocol.wire import ProtocolConfig

SECTIONS: Final = ("protocol", "fec", "policy", "audit")
#: seconds per figure, and the workload sizes, of a full run and of --quick
_SECONDS: Final = {False: 1.0, True: 0.2}
_PROTOCOL_BYTES: Final = {False: 16_000_000, True: 2_000_000}
_POLICY_RECORDS: Final = {False: 50_000, True: 10_000}
_AUDIT_ENTRIES: Final = {False: 50_000, True: 5_000}
#: what ``[protocol]`` accepts, so that every setting measured here can be configured
_PAYLOAD_RANGE: Final = (512, 8972)
_BLOCK_RANGE: Final = (1, 200)

T = TypeVar("T")


def _probability(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise click.BadParameter(f"{value} is not a probability in [0, 1)")
    return value


@click.command("bench")
@click.argument("what", nargs=-1, type=click.Choice(SECTIONS), metavar="[WHAT]...")
@click.option(
    "--quick",
    is_flag=True,
    help=f"Smoke run: smaller workloads, {_SECONDS[True]:g} s per figure (figures vary more).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.0, min_open=True, max=600.0),
    default=None,
    help=f"Time spent on each figure [default: {_SECONDS[False]:g}, "
    f"{_SECONDS[True]:g} with --quick]. Runs are never cut short, so a figure takes at "
    "least one run.",
)
@click.option(
    "--k",
    "k",
    default=32,
    show_default=True,
    type=click.IntRange(*_BLOCK_RANGE),
    help="protocol, fec: source symbols per block ([protocol] k).",
)
@click.option(
    "--m",
    "m",
    default=8,
    show_default=True,
    type=click.IntRange(0, _BLOCK_RANGE[1]),
    help="protocol, fec: repair symbols per block ([protocol] m); at most k.",
)
@click.option(
    "--payload-size",
    default=1472,
    show_default=True,
    type=click.IntRange(*_PAYLOAD_RANGE),
    help="protocol, fec: UDP payload bytes per datagram ([protocol] payload_size; "
    "1472 for MTU 1500, 8972 for jumbo frames).",
)
@click.option(
    "--codec",
    type=click.Choice(["rs", "zfec", "raptorq"]),
    default="rs",
    show_default=True,
    help="protocol, fec: erasure codec ([protocol] codec).",
)
@click.option(
    "--cipher",
    type=click.Choice(sorted(bm.CIPHER_NAMES)),
    default="aes-256-gcm",
    show_default=True,
    help="protocol: AEAD of every datagram ([protocol] cipher).",
)
@click.option(
    "--record-size",
    default=1000,
    show_default=True,
    type=click.IntRange(1, 1 << 20),
    help="protocol: value bytes of each record (a short key comes on top).",
)
@click.option(
    "--loss",
    default=0.05,
    show_default=True,
    callback=_probability,
    help="protocol: share of datagrams lost, independently, before the receiver.",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="policy: the policy file to measure [default: a built-in 20-rule policy].",
)
@click.option(
    "--value-size",
    default=500,
    show_default=True,
    type=click.IntRange(2, 1 << 20),
    help="policy: bytes of JSON value to aim for in the records made up for --policy "
    "(padded where the rule's schema leaves room, never above its max_bytes).",
)
@click.option(
    "--audit-dir",
    type=click.Path(exists=True, file_okay=False, writable=True, path_type=Path),
    default=None,
    help="audit: write the test logs under this directory, on the disk the audit log will "
    "use [default: the system's temporary directory]; removed afterwards.",
)
def bench(
    what: tuple[str, ...],
    quick: bool,
    as_json: bool,
    seconds: float | None,
    k: int,
    m: int,
    payload_size: int,
    codec: str,
    cipher: str,
    record_size: int,
    loss: float,
    policy_file: Path | None,
    value_size: int,
    audit_dir: Path | None,
) -> None:
    """Measure what this machine can carry, before choosing a link rate and a policy.

    Short runs in memory, on one core, with no Kafka and no network: the protocol sessions,
    the FEC codec, a policy and the audit log, each driven the way the sender and receiver
    services drive it. WHAT is any of protocol, fec, policy, audit (default: all four).
    The figures are for this machine and one core: run it on the appliance itself, while it
    is otherwise idle, and with the settings you mean to configure.

    \b
    Figures, per second of CPU time on one core (audit: of wall-clock time):
      protocol sender, receiver  MB/s of record payload (key, value, headers)
                                 through SenderSession, and through
                                 ReceiverSession.receive_datagrams at --loss
               datagrams/s       UDP datagrams made, or taken
               link rate         Mbit/s on the wire of those datagrams, IP/UDP
                                 headers and Ethernet framing counted, as
                                 [udp] rate_mbit counts them
               wire overhead     UDP payload bytes per record payload byte
               delivered         records delivered, each compared with the
                                 one sent; delivered + reported lost = sent
      fec      encode, decode    MB/s of source data; decode rebuilds m lost
                                 source symbols
      policy   decisions/s       records judged, all of them records the
                                 policy forwards (for --policy, made up from
                                 its own rules and schemas)
      audit    entries/s         hash-chained, a signed checkpoint every 1000;
                                 in the caller's thread, and through the
                                 writer thread the services use

    The sender judges and sends on one core, so the summary adds the policy's time
    per record to the sender's and gives the most [udp] rate_mbit this machine can
    feed; Kafka and the socket take their share on top. Figures vary by a few per
    cent from run to run: compare settings on the same machine.

    \b
    Examples:
      diode bench                         everything, about 10 seconds
      diode bench --quick                 a smoke run, a few seconds
      diode bench protocol --k 64 --m 16 --loss 0.1
      diode bench protocol fec --payload-size 8972
      diode bench policy --policy plant.yaml
                                          decisions/s of your own policy
      diode bench audit --audit-dir /var/lib/diode
                                          on the disk the audit log will use
      diode bench --json > bench.json     the same figures as one JSON object
    """
    sections = [s for s in SECTIONS if s in what] if what else list(SECTIONS)
    per_figure = seconds if seconds is not None else _SECONDS[quick]

    # every setting is checked before anything is measured
    config = (
        _protocol_config(k, m, payload_size, codec, cipher)
        if {"protocol", "fec"} & set(sections)
        else None
    )
    work = None
    if "protocol" in sections:
        assert config is not None
        n = max(16, min(200_000, _PROTOCOL_BYTES[quick] // record_size))
        try:
            work = bm.ProtocolWorkload(config, bm.protocol_records(n, record_size), loss=loss)
        except ConfigError as exc:
            raise click.BadParameter(f"{record_size}: {exc}", param_hint="'--record-size'") from exc
    policy_work = None
    if "policy" in sections:
        policy_work = _policy_workload(policy_file, _POLICY_RECORDS[quick], value_size)

    report: dict[str, Any] = {
        "machine": bm.machine(),
        "quick": quick,
        "seconds_per_figure": per_figure,
        "sections": sections,
    }
    figures: dict[str, Any] = {}
    with _progress(not as_json) as step:
        try:
            if work is not None:
                figures["protocol"] = step(
                    "protocol", lambda: bm.measure_protocol(work, seconds=per_figure)
                )
            if "fec" in sections:
                assert config is not None
                if m == 0:
                    report["fec"] = {"skipped": "m=0: no repair symbols, no FEC to measure"}
                else:
                    figures["fec"] = step(
                        "fec",
                        lambda: bm.measure_fec(codec, k, m, config.symbol_size, seconds=per_figure),
                    )
            if policy_work is not None:
                figures["policy"] = step(
                    "policy", lambda: bm.measure_policy(policy_work, seconds=per_figure)
                )
            if "audit" in sections:
                figures["audit"] = step(
                    "audit",
                    lambda: bm.measure_audit(
                        entries=_AUDIT_ENTRIES[quick], seconds=per_figure, directory=audit_dir
                    ),
                )
        except BenchmarkError as exc:
            raise click.ClickException(str(exc)) from exc
    for name, fig in figures.items():
        report[name] = fig.as_dict()
    summary = _summary(figures)
    if summary:
        report["summary"] = summary
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
    else:
        _print_tables(report, figures, summary)


def _protocol_config(k: int, m: int, payload_size: int, codec: str, cipher: str) -> ProtocolConfig:
    try:
        return ProtocolConfig(
            payload_size=payload_size, k=k, m=m, codec=codec, cipher=bm.CIPHER_NAMES[cipher]
        )
    except ConfigError as exc:
        if "not installed" in str(exc):
            raise click.BadParameter(str(exc), param_hint="'--codec'") from exc
        raise click.UsageError(
            f"{exc} (from --k {k} --m {m} --payload-size {payload_size} --codec {codec})"
        ) from exc


def _policy_workload(path: Path | None, records: int, value_size: int) -> bm.PolicyWorkload:
    if path is None:
        return bm.policy_workload(None, records=records)
    try:
        policy = load_policy(path)
    except PolicyValidationError as exc:
        lines = "\n".join(f"  {f}:{line}: {msg}" for f, line, msg in exc.problems)
        raise click.BadParameter(
            f"{path} is not a valid policy (check it with `diode policy validate`):\n{lines}",
            param_hint="'--policy'",
        ) from exc
    try:
        return bm.policy_workload(policy, records=records, value_size=value_size)
    except PolicyError as exc:
        raise click.BadParameter(str(exc), param_hint="'--policy'") from exc


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[Callable[[str, Callable[[], T]], T]]:
    """A ``step(name, fn)`` that runs ``fn`` with a status line on a terminal's stderr."""
    from rich.console import Console

    console = Console(stderr=True)
    live = show and sys.stderr.isatty()

    def step(name: str, fn: Callable[[], T]) -> T:
        if not live:
            return fn()
        with console.status(f"measuring {name} ..."):
            return fn()

    yield step


def _summary(figures: dict[str, Any]) -> dict[str, Any]:
    """What the figures mean together for one link; empty without the protocol figures."""
    proto = figures.get("protocol")
    if not isinstance(proto, bm.ProtocolFigures):
        return {}
    slower = "sender" if proto.sender_mb_s <= proto.receiver_mb_s else "receiver"
    mb_s = min(proto.sender_mb_s, proto.receiver_mb_s)
    out: dict[str, Any] = {
        "record_size": proto.record_size,
        "payload_mb_s": round(mb_s, 1),
        "limited_by": slower,
        "link_mbit_s": round(proto.link_mbit_s(mb_s)),
        "max_rate_mbit": round(proto.link_mbit_s(mb_s)),
    }
    pol = figures.get("policy")
    if isinstance(pol, bm.PolicyFigures):
        # the sender judges and sends on one core: the times per record add up
        per_record = proto.payload_bytes / proto.records
        seconds = 1 / pol.decisions_per_s + per_record / (proto.sender_mb_s * 1e6)
        with_policy = per_record / seconds / 1e6
        out["sender_records_per_s_with_policy"] = round(1 / seconds)
        out["sender_mb_s_with_policy"] = round(with_policy, 1)
        out["sender_link_mbit_s_with_policy"] = round(proto.link_mbit_s(with_policy))
        out["max_rate_mbit"] = min(out["max_rate_mbit"], out["sender_link_mbit_s_with_policy"])
    return out


def _print_tables(report: dict[str, Any], figures: dict[str, Any], summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    mach = report["machine"]
    console.print(
        f"[bold]diode bench[/bold] on {mach['processor']} ({mach['cpus']} CPUs, "
        f"{mach['machine']}), Python {mach['python']}, rs kernel {mach['rs_kernel']}: "
        f"figures for this machine and one core, {report['seconds_per_figure']:g} s each"
    )

    def table(title: str, rows: list[tuple[str, str, str]]) -> None:
        t = Table(title=escape(title), title_justify="left", show_header=True)
        t.add_column("figure")
        t.add_column("value", justify="right")
        t.add_column("what it is")
        for row in rows:
            t.add_row(*(escape(cell) for cell in row))
        console.print(t)

    proto = figures.get("protocol")
    if isinstance(proto, bm.ProtocolFigures):
        cfg = proto.config
        c = proto.check
        d = report["protocol"]
        table(
            f"protocol: k={cfg.k} m={cfg.m} {cfg.codec} {d['cipher']}, payload {cfg.payload_size} B "
            f"(symbols of {cfg.symbol_size} B), records of {proto.record_size} B, "
            f"{proto.loss:.1%} loss",
            [
                ("sender", f"{proto.sender_mb_s:,.1f} MB/s", "record payload, SenderSession"),
                ("sender datagrams", f"{proto.sender_datagrams_per_s:,.0f} /s", "made"),
                (
                    "sender link rate",
                    f"{d['sender_link_mbit_s']:,} Mbit/s",
                    "on the wire, as [udp] rate_mbit counts",
                ),
                (
                    "receiver",
                    f"{proto.receiver_mb_s:,.1f} MB/s",
                    f"record payload, receive_datagrams {bm.RECEIVE_BATCH} at a time",
                ),
                ("receiver datagrams", f"{proto.receiver_datagrams_per_s:,.0f} /s", "taken"),
                (
                    "receiver link rate",
                    f"{d['receiver_link_mbit_s']:,} Mbit/s",
                    "link rate whose datagrams it keeps up with",
                ),
                (
                    "wire overhead",
                    f"{proto.wire_bytes_per_payload_byte:.3f} B/B",
                    "UDP payload bytes per record payload byte "
                    f"(+{proto.wire_bytes_per_payload_byte - 1:.0%})",
                ),
                (
                    "delivered",
                    f"{c.records_delivered:,} of {c.records_sent:,}",
                    "records, each compared with the one sent; "
                    + (
                        f"{c.records_lost:,} lost in {c.blocks_lost} blocks, all reported as gaps"
                        if c.records_lost
                        else "none lost"
                    )
                    + f"; {c.blocks_recovered} blocks rebuilt by FEC",
                ),
            ],
        )
    fec = figures.get("fec")
    if isinstance(fec, bm.FecFigures):
        table(
            f"fec: {fec.codec}, k={fec.k} m={fec.m}, symbols of {fec.symbol_size} B",
            [
                (
                    "encode",
                    f"{fec.encode_mb_s:,.0f} MB/s",
                    f"source data, {fec.m} repair symbols made",
                ),
                (
                    "decode",
                    f"{fec.decode_mb_s:,.0f} MB/s",
                    f"source data, {fec.m} lost source symbols rebuilt "
                    f"(given {fec.decode_symbols_given} symbols)",
                ),
            ],
        )
    elif "fec" in report:
        console.print(escape(f"fec: {report['fec']['skipped']}"))
    pol = figures.get("policy")
    if isinstance(pol, bm.PolicyFigures):
        d = report["policy"]
        table(
            f"policy: {pol.source} ({pol.name}, {pol.rules} rules)",
            [
                ("decisions", f"{pol.decisions_per_s:,.0f} /s", "records judged"),
                ("per decision", f"{d['us_per_decision']:.2f} us", ""),
                (
                    "records",
                    f"{pol.records:,}",
                    f"on {pol.topics} topics, values of {pol.value_bytes_median:g} B (median), "
                    f"{d['forwarded_share']:.1%} forwarded",
                ),
            ],
        )
        for skipped in pol.skipped_rules:
            console.print(escape(f"  not measured: {skipped}"))
    aud = figures.get("audit")
    if isinstance(aud, bm.AuditFigures):
        table(
            f"audit: {aud.entries:,} entries per run, checkpoint every {aud.checkpoint_every}, "
            f"fsync {aud.fsync}, in {aud.directory}",
            [
                ("sync", f"{aud.sync_entries_per_s:,.0f} /s", "entries, in the caller's thread"),
                (
                    "threaded",
                    f"{aud.threaded_entries_per_s:,.0f} /s",
                    "entries, through the writer thread (as the services write)",
                ),
            ],
        )
    if summary:
        line = (
            f"One core carries at most {summary['payload_mb_s']:,.1f} MB/s of "
            f"{summary['record_size']}-byte records here ({summary['limited_by']} is the "
            f"slower side), {summary['link_mbit_s']:,} Mbit/s on the wire."
        )
        if "sender_records_per_s_with_policy" in summary:
            line += (
                " With the policy on the sender's core: "
                f"{summary['sender_records_per_s_with_policy']:,} records/s, "
                f"{summary['sender_mb_s_with_policy']:,.1f} MB/s, "
                f"{summary['sender_link_mbit_s_with_policy']:,} Mbit/s."
            )
        line += (
            f" Set [udp] rate_mbit to at most {summary['max_rate_mbit']:,}, less the share "
            "Kafka and the socket take."
        )
        console.print(escape(line))
