"""``diode keys generate`` and the key loaders: private keys are 0600 whatever the umask, a
private key that group or others can access is refused with a message that says what to do,
and the generated files make a working sender/receiver pair."""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from diode.cli import main
from diode.errors import KeyFileError
from diode.protocol import crypto
from diode.protocol.events import RecordsDelivered
from diode.protocol.receiver import ReceiverSession
from diode.protocol.sender import SenderSession
from diode.protocol.wire import ProtocolConfig
from tests.protocol.sessionkit import records_for

PRIVATE = ("sender.key", "receiver.key", "receiver-audit.key")
PUBLIC = ("sender.pub", "receiver.pub", "receiver-audit.pub")
LOADERS: dict[str, Callable[[Path], object]] = {
    "sender.key": crypto.load_signing_key,
    "receiver-audit.key": crypto.load_signing_key,
    "receiver.key": crypto.load_receiver_private_key,
}


@pytest.fixture
def keep_umask() -> Iterator[None]:
    """Let a test set the process umask; put the old one back afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
@pytest.mark.usefixtures("keep_umask")
def test_generate_writes_private_keys_0600_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    os.umask(mask)
    out = tmp_path / "new" / "keys"  # created, parents too
    result = CliRunner().invoke(main, ["keys", "generate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.split() == [str(out / name) for name in crypto.KEY_FILE_NAMES]
    assert sorted(p.name for p in out.iterdir()) == sorted(PRIVATE + PUBLIC)
    for name in PRIVATE:
        assert _mode(out / name) == 0o600, name
        assert b"PRIVATE KEY" in (out / name).read_bytes()
    for name in PUBLIC:
        assert _mode(out / name) == 0o644 & ~mask, name
        assert b"PUBLIC KEY" in (out / name).read_bytes()


def test_generated_keys_make_a_working_pair(tmp_path: Path) -> None:
    crypto.generate_key_files(tmp_path)
    cfg = ProtocolConfig()
    sender = SenderSession(
        cfg,
        crypto.load_signing_key(tmp_path / "sender.key"),
        crypto.load_receiver_public_key(tmp_path / "receiver.pub"),
        random.Random(1).randbytes,
        0.0,
    )
    receiver = ReceiverSession(
        cfg,
        crypto.load_receiver_private_key(tmp_path / "receiver.key"),
        crypto.load_verify_key(tmp_path / "sender.pub"),
    )
    records = records_for(50)
    for d in sender.add_many(records, 0.0) + sender.flush(0.0):
        receiver.receive_datagram(d, 0.0)
    receiver.poll(1.0)
    events = receiver.events()
    assert [r for e in events if isinstance(e, RecordsDelivered) for r in e.records] == records
    # the audit key is a separate identity, not the sender's
    audit = crypto.load_signing_key(tmp_path / "receiver-audit.key").verify_key
    assert audit == crypto.load_verify_key(tmp_path / "receiver-audit.pub")
    assert audit != crypto.load_verify_key(tmp_path / "sender.pub")


@pytest.mark.parametrize("name", PRIVATE)
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602, 0o610])
def test_a_private_key_others_can_access_is_refused(tmp_path: Path, name: str, mode: int) -> None:
    crypto.generate_key_files(tmp_path)
    path = tmp_path / name
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        LOADERS[name](path)
    message = str(info.value)
    assert f"private key file {path} has mode {mode:04o}" in message
    assert "expected 0600" in message and f"chmod 600 {path}" in message
    # and through the command line: exit 1 and the same message, no traceback
    result = CliRunner().invoke(main, ["keys", "show", str(path)])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    path.chmod(0o600)
    LOADERS[name](path)


@pytest.mark.parametrize("name", PRIVATE)
def test_owner_only_modes_are_accepted(tmp_path: Path, name: str) -> None:
    crypto.generate_key_files(tmp_path)
    for mode in (0o400, 0o600, 0o700):
        (tmp_path / name).chmod(mode)
        LOADERS[name](tmp_path / name)


def test_generate_refuses_to_overwrite_and_force_replaces(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["keys", "generate", "--out", str(tmp_path)]).exit_code == 0
    (tmp_path / "receiver.pub").unlink()  # one missing, the others still there
    before = {name: (tmp_path / name).read_bytes() for name in PRIVATE}
    again = runner.invoke(main, ["keys", "generate", "--out", str(tmp_path)])
    assert again.exit_code == 1
    assert f"refusing to overwrite existing key files: {tmp_path / 'sender.key'}" in again.output
    assert not (tmp_path / "receiver.pub").exists()
    assert {name: (tmp_path / name).read_bytes() for name in PRIVATE} == before
    forced = runner.invoke(main, ["keys", "generate", "--out", str(tmp_path), "--force"])
    assert forced.exit_code == 0, forced.output
    for name in PRIVATE:
        assert (tmp_path / name).read_bytes() != before[name]
        assert _mode(tmp_path / name) == 0o600


def test_generate_help_names_the_files_and_the_mode() -> None:
    result = CliRunner().invoke(main, ["keys", "generate", "--help"])
    assert result.exit_code == 0
    for word in ("sender.key", "receiver.key", "sender.pub", "receiver.pub", "0600", "--out"):
        assert word in result.output
