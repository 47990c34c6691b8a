"""``diode audit``: verify, read, summarise and export tamper-evident audit logs."""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import click

from diode.audit import ChainReport, verify
from diode.audit.review import CSV_COLUMNS, Filter, Reader, compute_stats, csv_row, summary
from diode.errors import DiodeError
from diode.protocol import crypto

#: problems printed per chain before "... and N more"
_SHOWN_PROBLEMS = 20


class _UsageError(click.ClickException):
    """Cannot even start: a file or key is missing or unreadable (exit 2, not 1)."""

    exit_code = 2


_files_argument = click.argument("files", nargs=-1, required=True, metavar="FILE...")


def _filters(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option(
        "--until",
        metavar="TIME",
        help="Only entries before this time (exclusive); e.g. 2025-03-01T12:00:00Z.",
    )(f)
    f = click.option(
        "--since",
        metavar="TIME",
        help="Only entries at or after this time (RFC 3339; a date alone is midnight UTC).",
    )(f)
    f = click.option(
        "--topic",
        "topics",
        multiple=True,
        metavar="GLOB",
        help="Only entries about this topic (glob, e.g. 'plant.*'); repeatable.",
    )(f)
    f = click.option(
        "--event",
        "events",
        multiple=True,
        metavar="EVENT",
        help="Only this event (e.g. gap, record_refused); repeatable.",
    )(f)
    return f


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    """A ``DiodeError`` inside is a file or key that cannot be read: exit 2."""
    try:
        yield
    except DiodeError as exc:
        raise _UsageError(str(exc)) from exc


def _make_filter(
    events: Sequence[str], topics: Sequence[str], since: str | None, until: str | None
) -> Filter:
    try:
        return Filter.build(events, topics, since, until)
    except DiodeError as exc:
        raise click.BadParameter(str(exc)) from exc


def _select(
    files: Sequence[str],
    events: Sequence[str],
    topics: Sequence[str],
    since: str | None,
    until: str | None,
) -> tuple[Reader, Filter]:
    """The reader over ``files`` and the filter the ``_filters`` options describe."""
    flt = _make_filter(events, topics, since, until)
    with _usage_errors():
        return Reader(files), flt


def _write_raw(reader: Reader, flt: Filter, handle: IO[str], limit: int | None = None) -> int:
    """Write the matching entries exactly as they were written, one a line; how many."""
    count = 0
    for item in reader.matching(flt):
        handle.write(item.raw.decode("utf-8") + "\n")
        count += 1
        if limit is not None and count >= limit:
            break
    return count


def _warn_skipped(reader: Reader) -> None:
    if reader.skipped:
        click.echo(
            f"warning: {reader.skipped} unreadable line(s) skipped; "
            "run `diode audit verify` to find out why",
            err=True,
        )


@click.group("audit")
def audit() -> None:
    """Verify and review tamper-evident audit logs.

    Each program writes one JSON object per line. Every entry carries the hash of the one
    before it, and a signed checkpoint (Ed25519 over the chain head and entry count) is
    written at intervals, at rotation and at close. Editing, removing, reordering or
    inserting an entry, or cutting the end off, breaks the chain where it happened.

    \b
    Files: audit.jsonl is the live file; when it rotates it is renamed
    audit.jsonl.000001, audit.jsonl.000002, ... (a higher number is newer).
    Give all of them, or their directory.

    \b
      diode audit verify /var/log/diode/ --key keys/sender.pub --key keys/receiver-audit.pub
      diode audit show audit.jsonl* --event gap --since 2025-03-01
      diode audit stats /var/log/diode/
      diode audit export audit.jsonl* --format csv --out review.csv
    """


@audit.command("verify")
@_files_argument
@click.option(
    "--key",
    "key_files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Public key that must have signed the checkpoints: sender.pub for the sender's "
    "log, receiver-audit.pub for the receiver's. Repeatable: each checkpoint must be signed "
    "by one of the keys (both logs at once). Without it only the hash chain is checked.",
)
@click.option(
    "--live",
    is_flag=True,
    help="The newest file belongs to a running program: entries after its last checkpoint "
    "and a half-written last line are expected, not a truncation.",
)
@click.option(
    "--partial",
    is_flag=True,
    help="The files start in the middle of the chain (older files archived elsewhere); "
    "trust starts at the first entry given.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def verify_command(
    files: tuple[str, ...], key_files: tuple[Path, ...], live: bool, partial: bool, as_json: bool
) -> None:
    """Prove that audit files were not edited, cut, reordered or padded.

    FILE can be a file, a directory (all *.jsonl and *.jsonl.N files in it) or a glob.
    Files of different series (a sender's and a receiver's log) are checked as separate
    chains.

    \b
    Exit status: 0 the chains are intact; 1 a chain is broken (the first broken entry is
    named with its file, line, seq and kind); 2 the files or key could not be read.

    \b
    Kinds: edited (content changed, or changed and re-hashed), removed (entries missing),
    reordered, inserted (an entry that does not belong, or a copy), truncated (the log
    ends without its closing checkpoint: entries after the last checkpoint are unsigned),
    torn (the last line was cut: a crash mid-write), forged (a checkpoint whose signature,
    key or chain is wrong).
    """
    with _usage_errors():
        keys = [crypto.load_verify_key(k) for k in key_files] or None
        report = verify(files, keys, live=live, partial=partial)
    if as_json:
        click.echo(json.dumps(_report_json(report.chains, report.ok), indent=2))
    else:
        for chain in report.chains:
            _print_chain(chain)
        if keys is None:
            click.echo(
                "warning: checkpoint signatures were NOT checked; give --key to prove who "
                "wrote the log",
                err=True,
            )
    if not report.ok:
        first = report.first_problem
        if first is not None and not as_json:
            click.echo(f"first broken entry: {first}", err=True)
        sys.exit(1)


def _report_json(chains: Sequence[ChainReport], ok: bool) -> dict[str, object]:
    return {
        "ok": ok,
        "chains": [
            {
                "series": c.series,
                "ok": c.ok,
                "files": list(c.files),
                "entries": c.entries,
                "checkpoints": c.checkpoints,
                "signatures_checked": c.signatures_checked,
                "signed_by": list(c.signed_by),
                "unsigned": c.unsigned,
                "last_seq": c.last_seq,
                "head": c.head,
                "chain_ids": list(c.chain_ids),
                "problems": [
                    {
                        "kind": str(p.kind),
                        "file": p.file,
                        "line": p.line,
                        "seq": p.seq,
                        "message": p.message,
                    }
                    for p in c.problems
                ],
                "more_problems": c.more_problems,
                "notes": list(c.notes),
            }
            for c in chains
        ],
    }


def _print_chain(chain: ChainReport) -> None:
    status = "OK" if chain.ok else "BROKEN"
    if not chain.signatures_checked:
        signed = "signatures not checked"
    elif chain.signed_by:
        signed = f"signatures verified, key {', '.join(chain.signed_by)}"
    else:
        signed = "no signature verified"
    click.echo(
        f"{status}  {chain.series}: {len(chain.files)} file(s), {chain.entries} entries, "
        f"{chain.checkpoints} checkpoints ({signed}), last seq {chain.last_seq}"
    )
    if chain.head is not None:
        click.echo(f"    head {chain.head}")
    for note in chain.notes:
        click.echo(f"    note: {note}")
    for problem in chain.problems[:_SHOWN_PROBLEMS]:
        click.echo(f"    {problem}")
    hidden = len(chain.problems) - _SHOWN_PROBLEMS + chain.more_problems
    if hidden > 0:
        click.echo(f"    ... and {hidden} more problem(s)")


@audit.command("show")
@_files_argument
@_filters
@click.option("--json", "as_json", is_flag=True, help="Print matching entries as JSON lines.")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many entries.")
def show(
    files: tuple[str, ...],
    events: tuple[str, ...],
    topics: tuple[str, ...],
    since: str | None,
    until: str | None,
    as_json: bool,
    limit: int | None,
) -> None:
    """Print audit entries as a table (or JSON lines), oldest first.

    Reading is not verifying: run `diode audit verify` to prove the entries are genuine.

    \b
      diode audit show audit.jsonl --event record_refused --topic 'plant.*'
      diode audit show /var/log/diode/ --since 2025-03-01T08:00Z --until 2025-03-01T09:00Z
      diode audit show audit.jsonl --event gap --json | jq .fields
    """
    reader, flt = _select(files, events, topics, since, until)
    shown = 0
    with _usage_errors():
        if as_json:
            _write_raw(reader, flt, sys.stdout, limit)
        else:
            from rich.console import Console
            from rich.table import Table

            table = Table(show_lines=False, header_style="bold")
            for column in ("seq", "time (UTC)", "actor", "event"):
                table.add_column(column, no_wrap=True)
            table.add_column("details", overflow="fold", ratio=1)
            for item in reader.matching(flt):
                e = item.entry
                table.add_row(str(e.seq), e.time, e.actor, e.event, summary(e))
                shown += 1
                if limit is not None and shown >= limit:
                    break
            Console().print(table)
            click.echo(f"{shown} entries", err=True)
    _warn_skipped(reader)


@audit.command("stats")
@_files_argument
@_filters
@click.option("--json", "as_json", is_flag=True, help="Print the totals as one JSON object.")
def stats(
    files: tuple[str, ...],
    events: tuple[str, ...],
    topics: tuple[str, ...],
    since: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """Totals: entries per event, actor and topic; gaps and records lost; refusals by rule.

    \b
      diode audit stats /var/log/diode/ --since 2025-03-01
    """
    reader, flt = _select(files, events, topics, since, until)
    with _usage_errors():
        result = compute_stats(reader, flt).as_dict()
    if as_json:
        click.echo(json.dumps(result, indent=2))
        _warn_skipped(reader)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"{result['entries']} entries from {result['first_time']} to {result['last_time']}; "
        f"{result['gaps']} gaps, {result['records_lost']} records lost; "
        f"{result['audit_entries_dropped']} audit entries dropped"
    )
    for title, key in (
        ("entries per event", "by_event"),
        ("entries per actor", "by_actor"),
        ("entries per topic", "by_topic"),
        ("records lost per topic", "records_lost_by_topic"),
        ("records refused per rule", "refusals_by_rule"),
        ("records quarantined per rule", "quarantined_by_rule"),
        ("datagrams rejected per reason", "datagrams_rejected_by_reason"),
    ):
        counts = result[key]
        assert isinstance(counts, dict)
        if not counts:
            continue
        table = Table(title=title, title_justify="left", header_style="bold")
        table.add_column(key.split("_")[-1])
        table.add_column("count", justify="right")
        for name, count in counts.items():
            table.add_row(str(name), str(count))
        console.print(table)
    _warn_skipped(reader)


@audit.command("export")
@_files_argument
@_filters
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    required=True,
    help="csv: one row per entry with the common fields as columns (for spreadsheets); "
    "jsonl: the entries exactly as written (an unfiltered export still verifies).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write here instead of standard output.",
)
def export(
    files: tuple[str, ...],
    events: tuple[str, ...],
    topics: tuple[str, ...],
    since: str | None,
    until: str | None,
    fmt: str,
    out: Path | None,
) -> None:
    """Export entries for a spreadsheet or another tool.

    \b
      diode audit export /var/log/diode/ --format csv --out audit-march.csv --since 2025-03
      diode audit export audit.jsonl --format jsonl --event gap
    """
    reader, flt = _select(files, events, topics, since, until)
    with _usage_errors():
        if out is None:
            # a closed pipe (`| head`) is left to click, which exits quietly like other tools
            _export(reader, flt, fmt, sys.stdout)
        else:
            try:
                with out.open("w", encoding="utf-8", newline="") as handle:
                    count = _export(reader, flt, fmt, handle)
            except OSError as exc:
                raise _UsageError(f"cannot write {out}: {exc.strerror}") from exc
            click.echo(f"{count} entries written to {out}", err=True)
    _warn_skipped(reader)


def _export(reader: Reader, flt: Filter, fmt: str, handle: IO[str]) -> int:
    if fmt != "csv":
        return _write_raw(reader, flt, handle)
    count = 0
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for item in reader.matching(flt):
        writer.writerow(csv_row(item.entry))
        count += 1
    return count
