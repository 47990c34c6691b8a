"""The list of command groups registered on ``diode``; each group lives in its own module."""

from __future__ import annotations

import click


def all_commands() -> list[click.Command]:
    from diode.cli.audit import audit
    from diode.cli.bench import bench
    from diode.cli.keys import keys
    from diode.cli.policy import policy
    from diode.cli.run import receiver, sender
    from diode.cli.simulate import simulate

    commands: list[click.Command] = [
        audit,
        bench,
        keys,
        policy,
        receiver,
        sender,
        simulate,
    ]
    return commands
