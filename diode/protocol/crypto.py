"""Every use of ``cryptography.hazmat`` in the diode lives here.

Owns: key pairs and their files, Ed25519 signatures, and (further down) the session-key
schedule and per-datagram AEAD. Other modules see only the small wrapper classes below, so
a change of primitive or library touches one file.

Key files are PEM (PKCS#8 for private keys, SubjectPublicKeyInfo for public keys), so they
can be inspected with standard tools. A private key file that group or others can read is
refused: on an appliance that is a misconfiguration worth stopping for.

Files written by ``generate_key_files``:

=====================  ========  ==============================================
file                   kind      used for
=====================  ========  ==============================================
sender.key/.pub        Ed25519   sender identity: signs key announcements,
                                 manifests and the sender's audit checkpoints
receiver.key/.pub      X25519    session keys are wrapped to this public key
receiver-audit.key     Ed25519   signs the receiver's audit checkpoints
/.pub
=====================  ========  ==============================================
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)

from diode.errors import AuthenticationError, ConfigError, KeyFileError

SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32

KEY_FILE_NAMES: tuple[str, ...] = (
    "sender.key",
    "sender.pub",
    "receiver.key",
    "receiver.pub",
    "receiver-audit.key",
    "receiver-audit.pub",
)


def _fingerprint(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()[:16]


class VerifyKey:
    """An Ed25519 public key: checks signatures made by the matching ``SigningKey``."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != PUBLIC_KEY_SIZE:
            raise KeyFileError(
                f"Ed25519 public key is {len(raw)} bytes, expected {PUBLIC_KEY_SIZE}"
            )
        self.raw = raw
        self._key = Ed25519PublicKey.from_public_bytes(raw)

    def verify(self, signature: bytes, data: bytes) -> None:
        """Raise ``AuthenticationError`` unless ``signature`` is valid for ``data``."""
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            raise AuthenticationError("signature did not verify") from None

    def is_valid(self, signature: bytes, data: bytes) -> bool:
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of SHA-256 of the raw public key."""
        return _fingerprint(self.raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


class SigningKey:
    """An Ed25519 private key."""

    __slots__ = ("_key", "verify_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.verify_key = VerifyKey(
            key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """Deterministic key from 32 bytes, for tests and simulations."""
        if len(seed) != 32:
            raise ConfigError(f"Ed25519 seed is {len(seed)} bytes, expected 32")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


class ReceiverPublicKey:
    """The receiver's X25519 public key: session keys are wrapped to it."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != PUBLIC_KEY_SIZE:
            raise KeyFileError(
                f"X25519 public key is {len(raw)} bytes, expected {PUBLIC_KEY_SIZE}"
            )
        self.raw = raw
        self._key = X25519PublicKey.from_public_bytes(raw)

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReceiverPublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


class ReceiverPrivateKey:
    """The receiver's X25519 private key."""

    __slots__ = ("_key", "public_key")

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self.public_key = ReceiverPublicKey(
            key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    @classmethod
    def generate(cls) -> ReceiverPrivateKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> ReceiverPrivateKey:
        """Deterministic key from 32 bytes, for tests and simulations."""
        if len(seed) != 32:
            raise ConfigError(f"X25519 seed is {len(seed)} bytes, expected 32")
        return cls(X25519PrivateKey.from_private_bytes(seed))

    def exchange(self, peer_public: bytes) -> bytes:
        """Raw X25519 shared secret with an ephemeral public key from the wire."""
        if len(peer_public) != PUBLIC_KEY_SIZE:
            raise AuthenticationError("ephemeral public key has the wrong size")
        try:
            return self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            # an all-zero shared secret (small-order point) is refused by OpenSSL
            raise AuthenticationError("key exchange failed") from None

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


# --------------------------------------------------------------------------- key files


def _public_pem(raw_key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return raw_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_private(path: Path, pem: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def _write_public(path: Path, pem: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, pem)
    finally:
        os.close(fd)


def generate_key_files(out_dir: Path, *, overwrite: bool = False) -> list[Path]:
    """Write the three key pairs into ``out_dir``; refuse to overwrite unless told to."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in KEY_FILE_NAMES]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        names = ", ".join(str(p) for p in existing)
        raise KeyFileError(f"refusing to overwrite existing key files: {names} (use --force)")
    for p in existing:
        p.unlink()
    sender = Ed25519PrivateKey.generate()
    receiver = X25519PrivateKey.generate()
    audit = Ed25519PrivateKey.generate()
    for stem, key in (("sender", sender), ("receiver", receiver), ("receiver-audit", audit)):
        priv = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(out_dir / f"{stem}.key", priv)
        _write_public(out_dir / f"{stem}.pub", _public_pem(key.public_key()))
    return paths


def _read_private_pem(path: Path) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"private key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or "
            f"others can access it; expected 0600 (run: chmod 600 {path})"
        )
    return path.read_bytes()


def _read_public_pem(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None


def load_signing_key(path: Path) -> SigningKey:
    """Load an Ed25519 private key (``sender.key`` or ``receiver-audit.key``)."""
    pem = _read_private_pem(path)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {path} is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"key file {path} holds a {type(key).__name__}, expected an Ed25519 private key"
        )
    return SigningKey(key)


def load_verify_key(path: Path) -> VerifyKey:
    """Load an Ed25519 public key (``sender.pub`` or ``receiver-audit.pub``)."""
    pem = _read_public_pem(path)
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(
            f"key file {path} holds a {type(key).__name__}, expected an Ed25519 public key"
        )
    return VerifyKey(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_receiver_private_key(path: Path) -> ReceiverPrivateKey:
    """Load the receiver's X25519 private key (``receiver.key``)."""
    pem = _read_private_pem(path)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {path} is not a PEM private key: {exc}") from None
    if not isinstance(key, X25519PrivateKey):
        raise KeyFileError(
            f"key file {path} holds a {type(key).__name__}, expected an X25519 private key"
        )
    return ReceiverPrivateKey(key)


def load_receiver_public_key(path: Path) -> ReceiverPublicKey:
    """Load the receiver's X25519 public key (``receiver.pub``)."""
    pem = _read_public_pem(path)
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {path} is not a PEM public key: {exc}") from None
    if not isinstance(key, X25519PublicKey):
        raise KeyFileError(
            f"key file {path} holds a {type(key).__name__}, expected an X25519 public key"
        )
    return ReceiverPublicKey(
        key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
