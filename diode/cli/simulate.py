"""``diode simulate``: the protocol end to end over a seeded lossy link, in memory."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import click

from diode.audit import Actor, AuditConfig, AuditEvent, AuditLog
from diode.errors import DiodeError
from diode.protocol.crypto import Cipher, SigningKey, load_signing_key
from diode.protocol.link import LinkConfig
from diode.protocol.receiver import ReceiverOptions
from diode.protocol.records import Compression
from diode.protocol.simulation import (
    EventCallback,
    SimulationParams,
    SimulationResult,
    derive_seed,
    generate_records,
    receiver_history,
    run_simulation,
)
from diode.protocol.wire import MAX_UDP_PAYLOAD, MIN_PAYLOAD_SIZE, ProtocolConfig

#: IPv4 header (20, no options) and UDP header (8): what the MTU holds besides the payload
_IP_UDP_HEADERS = 28
_CIPHERS = {"aes-256-gcm": Cipher.AES_256_GCM, "chacha20-poly1305": Cipher.CHACHA20_POLY1305}


def _probability(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise click.BadParameter(f"{value} is not a probability in [0, 1)")
    return value


@click.command("simulate")
@click.option(
    "--records",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=0),
    help="Records to send.",
)
@click.option(
    "--record-size",
    default=200,
    show_default=True,
    type=click.IntRange(min=0),
    help="Bytes of each record's value (keys and headers come on top).",
)
@click.option(
    "--topics", default=1, show_default=True, type=click.IntRange(min=1), help="Source topics."
)
@click.option(
    "--partitions",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Partitions per topic.",
)
@click.option(
    "--loss",
    default=0.0,
    show_default=True,
    callback=_probability,
    help="Long-run share of datagrams the link drops.",
)
@click.option(
    "--burst",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=1.0),
    help="Mean loss burst length in datagrams (Gilbert-Elliott); 1 means independent loss.",
)
@click.option(
    "--duplicate",
    default=0.0,
    show_default=True,
    callback=_probability,
    help="Probability that a datagram is delivered twice (the copy comes later).",
)
@click.option(
    "--reorder",
    default=0.0,
    show_default=True,
    callback=_probability,
    help=(
        "Probability that a datagram is held back and delivered after 1 to "
        f"{LinkConfig().reorder_depth} later ones."
    ),
)
@click.option(
    "--corrupt",
    default=0.0,
    show_default=True,
    callback=_probability,
    help="Probability that a datagram has one byte flipped.",
)
@click.option(
    "--repair",
    default=0.25,
    show_default=True,
    type=click.FloatRange(min=0.0, max=1.0),
    help="Repair symbols per source symbol (m = ceil(k * repair)).",
)
@click.option(
    "--k",
    "k",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="Source symbols per full block.",
)
@click.option(
    "--mtu",
    default=1500,
    show_default=True,
    type=click.IntRange(MIN_PAYLOAD_SIZE + _IP_UDP_HEADERS, MAX_UDP_PAYLOAD + _IP_UDP_HEADERS),
    help=f"Link MTU; datagrams fit MTU - {_IP_UDP_HEADERS} bytes (IPv4 and UDP headers).",
)
@click.option(
    "--interleave",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="Blocks interleaved on the wire.",
)
@click.option(
    "--cipher",
    type=click.Choice(sorted(_CIPHERS)),
    default="aes-256-gcm",
    show_default=True,
    help="AEAD that protects every datagram.",
)
@click.option(
    "--codec",
    type=click.Choice(["rs", "zfec", "raptorq"]),
    default="rs",
    show_default=True,
    help="FEC codec: rs (built-in SIMD Reed-Solomon), zfec, or raptorq (not MDS: needs k+2).",
)
@click.option("--compress", is_flag=True, help="Compress blocks with zlib.")
@click.option(
    "--rate",
    default=100_000.0,
    show_default=True,
    type=click.FloatRange(min=0.0, min_open=True),
    help="Records per second of simulated time (time is simulated, never slept).",
)
@click.option(
    "--restart-after",
    type=click.IntRange(min=1),
    default=None,
    help="Restart the sender (new session) after this many records; at most --records.",
)
@click.option("--seed", default=0, show_default=True, help="Seed for records, keys and link.")
@click.option(
    "--audit-log",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the simulated sender's and receiver's audit entries to this file "
    "(review it with `diode audit show/stats/verify`).",
)
@click.option(
    "--audit-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Ed25519 private key (e.g. keys/sender.key) that signs the audit checkpoints. "
    "Default: a key made from --seed, whose public half is written next to the log "
    "(audit.jsonl -> audit.pub).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def simulate(
    records: int,
    record_size: int,
    topics: int,
    partitions: int,
    loss: float,
    burst: float,
    duplicate: float,
    reorder: float,
    corrupt: float,
    repair: float,
    k: int,
    mtu: int,
    interleave: int,
    cipher: str,
    codec: str,
    compress: bool,
    rate: float,
    restart_after: int | None,
    seed: int,
    audit_log: Path | None,
    audit_key: Path | None,
    as_json: bool,
) -> None:
    """Send generated records through a lossy link and check what arrives.

    A SenderSession and a ReceiverSession run in memory, joined by a seeded link that
    drops (independently, or in Gilbert-Elliott bursts), duplicates, reorders and corrupts
    datagrams. Every delivered record is compared byte for byte with what was sent, order
    per partition is checked, and delivered + lost must equal sent, with every lost record
    inside a reported gap. Exits 1 if any check fails.

    \b
    Examples:
      diode simulate --records 100000 --loss 0.05
      diode simulate --loss 0.1 --burst 8 --interleave 8 --json
      diode simulate --repair 0.5 --loss 0.2 --corrupt 0.01 --reorder 0.05
      diode simulate --loss 0.12 --audit-log sim/audit.jsonl && diode audit stats sim/
    """
    if restart_after is not None and restart_after > records:
        # the sender would never restart: say so rather than run without the restart
        raise click.BadParameter(
            f"{restart_after} exceeds --records {records}: the sender would never restart",
            param_hint="'--restart-after'",
        )
    try:
        protocol = ProtocolConfig(
            payload_size=mtu - _IP_UDP_HEADERS,
            k=k,
            m=math.ceil(k * repair),
            codec=codec,
            cipher=_CIPHERS[cipher],
            compression=Compression.ZLIB if compress else Compression.NONE,
            interleave=interleave,
        )
        params = SimulationParams(
            records=records,
            record_size=record_size,
            topics=topics,
            partitions=partitions,
            seed=seed,
            rate=rate,
            link=LinkConfig(
                loss=loss,
                burst=burst,
                duplicate=duplicate,
                reorder=reorder,
                corrupt=corrupt,
                seed=seed,
            ),
            protocol=protocol,
            options=ReceiverOptions(),
            restart_after=restart_after,
        )
        began = time.perf_counter()
        if audit_log is None:
            result = run_simulation(params)
        else:
            result = _run_audited(params, audit_log, audit_key)
        elapsed = time.perf_counter() - began
    except DiodeError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(_as_json(result, params, elapsed), sort_keys=True))
    else:
        _print_table(result, params, elapsed)
    if not result.ok:
        raise click.ClickException("checks failed: " + "; ".join(result.problems[:5]))


def _run_audited(params: SimulationParams, path: Path, key_file: Path | None) -> SimulationResult:
    """Run the simulation with both sides' events written to one audit log.

    Entries are dated by simulated time from the moment the run starts, so intervals and
    link-down periods read as they would on a real link.
    """
    from diode.services.protocol_audit import ProtocolAuditor

    if key_file is not None:
        key = load_signing_key(key_file)
    else:
        key = SigningKey.from_seed(derive_seed(params.seed, "sender"))
        pub = path.with_suffix(".pub")
        path.parent.mkdir(parents=True, exist_ok=True)
        pub.write_bytes(key.verify_key.to_pem())
    base = time.time()
    clock = [base]
    log = AuditLog(
        AuditConfig(path=path, actor=Actor.SIMULATE, threaded=False, checkpoint_seconds=None),
        key,
        clock=lambda: clock[0],
    )
    started = {
        "config_fingerprint": f"{params.protocol.fingerprint:08x}",
        "policy_fingerprint": None,
        "mode": "simulate",
        "seed": params.seed,
        "records": params.records,
        "loss": params.link.loss,
        "burst": params.link.burst,
        "k": params.protocol.k,
        "m": params.protocol.m,
    }
    auditors: dict[str, ProtocolAuditor] = {}
    stopped: dict[str, object]
    try:
        for actor in (Actor.SENDER, Actor.RECEIVER):
            log.append(AuditEvent.SERVICE_START, started, actor=actor)
            auditors[actor] = ProtocolAuditor(log, actor=actor, interval=1.0)
        # the receiver's history, as the simulation's own accounting has it
        auditors[Actor.RECEIVER].seed(receiver_history(generate_records(params)))

        def on_event(side: str, event: object, now: float) -> None:
            clock[0] = base + now
            auditors[side].handle(event, clock[0])

        callback: EventCallback = on_event
        result = run_simulation(params, on_event=callback)
        clock[0] = base + result.simulated_seconds
        for side, auditor in auditors.items():
            auditor.close(clock[0])
            stopped = {
                "config_fingerprint": started["config_fingerprint"],
                "policy_fingerprint": None,
                "records_sent" if side == Actor.SENDER else "records_delivered": (
                    result.records_sent if side == Actor.SENDER else result.records_delivered
                ),
            }
            if side == Actor.RECEIVER:
                stopped["records_lost"] = result.records_lost
            log.append(AuditEvent.SERVICE_STOP, stopped, actor=side)
    finally:
        log.close()
    return result


def _as_json(result: SimulationResult, params: SimulationParams, elapsed: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "records_sent": result.records_sent,
        "records_delivered": result.records_delivered,
        "records_lost": result.records_lost,
        "records_redelivered": result.records_redelivered,
        "record_bytes_sent": result.record_bytes_sent,
        "datagrams_sent": result.datagrams_sent,
        "datagrams_dropped": result.datagrams_dropped,
        "datagrams_rejected": result.datagrams_rejected,
        "rejected": result.rejected,
        "blocks_sent": result.blocks_sent,
        "blocks_complete": result.blocks_complete,
        "blocks_recovered": result.blocks_recovered,
        "blocks_lost": result.blocks_lost,
        "padding_bytes": result.padding_bytes,
        "sessions": result.sessions,
        "link": dataclasses.asdict(result.link),
        "gaps": [
            {
                "topic": g.topic,
                "partition": g.partition,
                "first_offset": g.first_offset,
                "last_offset": g.last_offset,
                "count": g.count,
                "reason": g.reason,
            }
            for g in result.gaps
        ],
        "k": params.protocol.k,
        "m": params.protocol.m,
        "seed": params.seed,
        "simulated_seconds": round(result.simulated_seconds, 6),
        "wall_seconds": round(elapsed, 3),
        "ok": result.ok,
        "problems": list(result.problems),
    }
    return out


def _print_table(result: SimulationResult, params: SimulationParams, elapsed: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cfg = params.protocol
    link = params.link
    table = Table(
        title=(
            f"k={cfg.k} m={cfg.m} interleave={cfg.interleave} codec={cfg.codec} | loss "
            f"{link.loss:.3f} burst {link.burst:g} dup {link.duplicate:g} reorder "
            f"{link.reorder:g} corrupt {link.corrupt:g} | seed {params.seed}"
        )
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("records sent", result.records_sent),
        ("records delivered", result.records_delivered),
        ("records lost", result.records_lost),
        ("datagrams sent", result.datagrams_sent),
        ("datagrams dropped by the link", result.datagrams_dropped),
        ("datagrams rejected", result.datagrams_rejected),
        ("blocks sent", result.blocks_sent),
        ("blocks complete (no repair needed)", result.blocks_complete),
        ("blocks recovered by FEC", result.blocks_recovered),
        ("blocks lost", result.blocks_lost),
        ("padding bytes", result.padding_bytes),
        ("sender sessions", result.sessions),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    for reason, count in sorted(result.rejected.items()):
        table.add_row(f"  rejected: {reason}", str(count))
    console.print(table)
    for gap in result.gaps[:20]:
        console.print(
            f"gap {gap.topic}/{gap.partition} offsets {gap.first_offset}..{gap.last_offset} "
            f"({gap.count} records, {gap.reason})"
        )
    if len(result.gaps) > 20:
        console.print(f"... and {len(result.gaps) - 20} more gaps")
    verdict = "[green]all checks passed[/green]" if result.ok else "[red]checks FAILED[/red]"
    console.print(f"{verdict} in {elapsed:.2f}s of wall time")
