"""``diode keys``: make and inspect the key pairs of a sender/receiver pair."""

from __future__ import annotations

from pathlib import Path

import click

from diode.errors import DiodeError
from diode.protocol import crypto


@click.group("keys")
def keys() -> None:
    """Make and inspect key pairs.

    The sender signs with an Ed25519 identity key; session keys are wrapped to the
    receiver's X25519 key. Copy sender.pub and receiver.key to the IT side, sender.key and
    receiver.pub to the OT side. There is no shared secret to copy.
    """


@keys.command("generate")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the key files into (created if missing).",
)
@click.option("--force", is_flag=True, help="Overwrite key files that already exist.")
def generate(out_dir: Path, force: bool) -> None:
    """Write the key pairs of one sender and receiver into a directory.

    \b
      sender.key          Ed25519: signs key announcements and manifests  (OT side)
      sender.pub          verifies them                                   (IT side)
      receiver.key        X25519: unwraps the session keys                (IT side)
      receiver.pub        session keys are wrapped to it                  (OT side)
      receiver-audit.key  Ed25519: signs the receiver's audit checkpoints (IT side)
      receiver-audit.pub  verifies them                                   (anywhere)

    Private keys (*.key) are written with mode 0600 whatever the umask; the programs refuse
    to load a private key that group or others can access. Existing files are kept unless
    --force is given.
    """
    try:
        paths = crypto.generate_key_files(out_dir, overwrite=force)
    except DiodeError as exc:
        raise click.ClickException(str(exc)) from exc
    for path in paths:
        click.echo(str(path))


@keys.command("show")
@click.argument("key_file", type=click.Path(dir_okay=False, path_type=Path))
def show(key_file: Path) -> None:
    """Print the kind and fingerprint of a key file (public or private)."""
    try:
        text = key_file.read_bytes()
    except OSError as exc:
        raise click.ClickException(f"cannot read {key_file}: {exc.strerror}") from exc
    try:
        if b"PRIVATE KEY" in text:
            try:
                s = crypto.load_signing_key(key_file)
                click.echo(f"Ed25519 private key, public fingerprint {s.verify_key.fingerprint}")
            except DiodeError:
                r = crypto.load_receiver_private_key(key_file)
                click.echo(f"X25519 private key, public fingerprint {r.public_key.fingerprint}")
        else:
            try:
                v = crypto.load_verify_key(key_file)
                click.echo(f"Ed25519 public key, fingerprint {v.fingerprint}")
            except DiodeError:
                p = crypto.load_receiver_public_key(key_file)
                click.echo(f"X25519 public key, fingerprint {p.fingerprint}")
    except DiodeError as exc:
        raise click.ClickException(str(exc)) from exc
