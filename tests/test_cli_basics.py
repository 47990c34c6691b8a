"""The installed ``diode`` script answers --help and --version, and key files are safe."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import diode
from diode.cli import main
from diode.errors import KeyFileError
from diode.protocol import crypto


def _diode_script() -> str:
    found = shutil.which("diode", path=str(Path(sys.executable).parent))
    assert found is not None, "the console script 'diode' is not installed next to python"
    return found


def test_installed_script_version() -> None:
    out = subprocess.run(
        [_diode_script(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"diode, version {diode.__version__}"


def test_installed_script_help_lists_commands() -> None:
    out = subprocess.run(
        [_diode_script(), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "One-way data diode for Apache Kafka" in out
    assert "keys" in out


def test_keys_generate_writes_private_keys_0600(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keys", "generate", "--out", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    for name in crypto.KEY_FILE_NAMES:
        path = tmp_path / "k" / name
        mode = stat.S_IMODE(path.stat().st_mode)
        if name.endswith(".key"):
            assert mode == 0o600, (name, oct(mode))
        else:
            assert mode & 0o077 != 0o077  # public: readable, not writable by others
            assert mode & 0o002 == 0
    sk = crypto.load_signing_key(tmp_path / "k" / "sender.key")
    vk = crypto.load_verify_key(tmp_path / "k" / "sender.pub")
    assert sk.verify_key == vk
    rk = crypto.load_receiver_private_key(tmp_path / "k" / "receiver.key")
    assert rk.public_key == crypto.load_receiver_public_key(tmp_path / "k" / "receiver.pub")
    ak = crypto.load_signing_key(tmp_path / "k" / "receiver-audit.key")
    assert ak.verify_key == crypto.load_verify_key(tmp_path / "k" / "receiver-audit.pub")
    assert ak.verify_key != vk


def test_keys_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["keys", "generate", "--out", str(tmp_path)]).exit_code == 0
    before = (tmp_path / "sender.key").read_bytes()
    again = runner.invoke(main, ["keys", "generate", "--out", str(tmp_path)])
    assert again.exit_code != 0
    assert "refusing to overwrite" in again.output
    assert (tmp_path / "sender.key").read_bytes() == before
    forced = runner.invoke(main, ["keys", "generate", "--out", str(tmp_path), "--force"])
    assert forced.exit_code == 0
    assert (tmp_path / "sender.key").read_bytes() != before


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    crypto.generate_key_files(tmp_path)
    key = tmp_path / "sender.key"
    key.chmod(0o640)
    with pytest.raises(KeyFileError, match=r"mode 0640.*expected 0600"):
        crypto.load_signing_key(key)
    key.chmod(0o600)
    crypto.load_signing_key(key)
    result = CliRunner().invoke(main, ["keys", "show", str(tmp_path / "receiver.key")])
    assert result.exit_code == 0 and "X25519 private key" in result.output


def test_wrong_kind_of_key_is_refused(tmp_path: Path) -> None:
    crypto.generate_key_files(tmp_path)
    with pytest.raises(KeyFileError, match="expected an Ed25519 private key"):
        crypto.load_signing_key(tmp_path / "receiver.key")
    with pytest.raises(KeyFileError, match="expected an X25519 public key"):
        crypto.load_receiver_public_key(tmp_path / "sender.pub")
    with pytest.raises(KeyFileError, match="does not exist"):
        crypto.load_verify_key(tmp_path / "nope.pub")
    (tmp_path / "garbage.pub").write_text("not a key")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        crypto.load_verify_key(tmp_path / "garbage.pub")
