"""The ``diode`` command line: one click group, one module per command group.

Each sub-module defines its commands and is registered here, so ``diode --help`` lists them
all. The CLI is the outermost layer: it may import services, io, protocol, policy and audit;
nothing imports it.
"""

from __future__ import annotations

import click

from diode import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="diode")
def main() -> None:
    """One-way data diode for Apache Kafka.

    The sender (OT side) consumes allowed Kafka topics, applies the policy and sends
    signed, encrypted, FEC-protected UDP datagrams through a hardware diode. The receiver
    (IT side) authenticates every datagram, rebuilds blocks and produces the records into
    the IT Kafka cluster with key, value, headers and timestamp intact. Nothing flows back.

    \b
    Typical first steps:
      diode keys generate --out keys/      make the sender and receiver key pairs
      diode simulate --records 10000 --loss 0.02
                                           try the protocol over a lossy in-memory link
      diode policy init --out plant.yaml   start a policy (default deny)
      diode audit verify audit.jsonl       prove an audit log was not edited
    """


def _register() -> None:
    # Sub-modules import lazily-heavy libraries; registering here keeps `diode --help` the
    # single place that lists every command.
    from diode.cli import _commands

    for command in _commands.all_commands():
        main.add_command(command)


_register()
