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
from collections.abc import Callable
from enum import IntEnum
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from diode.errors import AuthenticationError, ConfigError, KeyFileError, LocalProtocolError

#: what the AEAD calls accept without copying
Buffer = bytes | bytearray | memoryview

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

    def to_pem(self) -> bytes:
        """SubjectPublicKeyInfo PEM, the format of ``sender.pub``."""
        return _public_pem(self._key)

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
            key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
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
            raise KeyFileError(f"X25519 public key is {len(raw)} bytes, expected {PUBLIC_KEY_SIZE}")
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
            key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
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


def _load_private(path: Path) -> object:
    pem = _read_private_pem(path)
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {path} is not a PEM private key: {exc}") from None


def _wrong_kind(path: Path, key: object, expected: str) -> KeyFileError:
    return KeyFileError(f"key file {path} holds a {type(key).__name__}, expected an {expected}")


def _load_public_raw(
    path: Path, kind: type[Ed25519PublicKey | X25519PublicKey], label: str
) -> bytes:
    pem = _read_public_pem(path)
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"key file {path} is not a PEM public key: {exc}") from None
    if not isinstance(key, kind):
        raise _wrong_kind(path, key, f"{label} public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_signing_key(path: Path) -> SigningKey:
    """Load an Ed25519 private key (``sender.key`` or ``receiver-audit.key``)."""
    key = _load_private(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise _wrong_kind(path, key, "Ed25519 private key")
    return SigningKey(key)


def load_verify_key(path: Path) -> VerifyKey:
    """Load an Ed25519 public key (``sender.pub`` or ``receiver-audit.pub``)."""
    return VerifyKey(_load_public_raw(path, Ed25519PublicKey, "Ed25519"))


def load_receiver_private_key(path: Path) -> ReceiverPrivateKey:
    """Load the receiver's X25519 private key (``receiver.key``)."""
    key = _load_private(path)
    if not isinstance(key, X25519PrivateKey):
        raise _wrong_kind(path, key, "X25519 private key")
    return ReceiverPrivateKey(key)


def load_receiver_public_key(path: Path) -> ReceiverPublicKey:
    """Load the receiver's X25519 public key (``receiver.pub``)."""
    return ReceiverPublicKey(_load_public_raw(path, X25519PublicKey, "X25519"))


# --------------------------------------------------------------------------- session keys
#
# The sender makes every session key itself from the randomness it is given, wraps it to the
# receiver's X25519 public key and signs the announcement (see diode.protocol.sender). The
# helpers below are the only place the primitives appear; the sessions see opaque objects.

SESSION_KEY_SIZE = 32
TAG_SIZE = 16
NONCE_SIZE = 12
#: ephemeral X25519 public key followed by the wrapped session key and its tag
WRAPPED_KEY_SIZE = PUBLIC_KEY_SIZE + SESSION_KEY_SIZE + TAG_SIZE

_WRAP_INFO = b"kafka-data-diode v1 session key wrap"
_ZERO_NONCE = bytes(NONCE_SIZE)


class Cipher(IntEnum):
    """The AEAD that protects datagrams; its code is part of the config fingerprint."""

    AES_256_GCM = 1
    CHACHA20_POLY1305 = 2


#: what ``SessionCipher.decrypt`` raises for a bad tag; ``open`` turns it into
#: ``AuthenticationError``, the receiver's per-datagram path catches it at its boundary
TagMismatch: Final = InvalidTag


class SessionCipher:
    """AEAD under one session key, created once per key (object creation costs ~1 us).

    ``seal`` returns ciphertext followed by the 16-byte tag. ``open`` raises
    ``AuthenticationError`` for any bad tag and says nothing else, so a forger learns nothing.
    ``decrypt`` is ``open`` without the translation (it raises ``TagMismatch``), for a
    caller that saves the Python frame per datagram; ``decrypt_into`` writes the plaintext
    into a caller's buffer of exactly the plaintext's length instead of returning bytes
    (if the tag fails, that buffer may hold unauthenticated bytes: the caller must treat it
    as unwritten). All accept bytes-like objects, so callers can pass memoryview slices
    without copying.
    """

    __slots__ = ("_aead", "cipher", "decrypt", "decrypt_into", "seal")

    def __init__(self, cipher: Cipher, key: bytes) -> None:
        if len(key) != SESSION_KEY_SIZE:
            raise LocalProtocolError(
                f"session key is {len(key)} bytes, expected {SESSION_KEY_SIZE}"
            )
        self.cipher = cipher
        aead: AESGCM | ChaCha20Poly1305
        if cipher == Cipher.AES_256_GCM:
            aead = AESGCM(key)
        elif cipher == Cipher.CHACHA20_POLY1305:
            aead = ChaCha20Poly1305(key)
        else:  # pragma: no cover - IntEnum makes this unreachable
            raise LocalProtocolError(f"unknown cipher {cipher!r}")
        self._aead = aead
        # bound method kept as an attribute: the sender calls it once per datagram
        self.seal: Callable[[bytes, Buffer, Buffer | None], bytes] = aead.encrypt
        self.decrypt: Callable[[bytes, Buffer, Buffer | None], bytes] = aead.decrypt
        # cryptography >= 45 decrypts in place, saving an allocation and a copy per datagram
        into = getattr(aead, "decrypt_into", None)
        self.decrypt_into: Callable[[bytes, Buffer, Buffer | None, memoryview], int] = (
            into if into is not None else self._decrypt_copy
        )

    def _decrypt_copy(self, nonce: bytes, data: Buffer, aad: Buffer | None, out: memoryview) -> int:
        plain = self._aead.decrypt(nonce, data, aad)
        if len(plain) != len(out):
            raise ValueError(f"buffer must be {len(plain)} bytes")
        out[:] = plain
        return len(plain)

    def open(self, nonce: bytes, data: Buffer, aad: Buffer) -> bytes:
        try:
            return self._aead.decrypt(nonce, data, aad)
        except InvalidTag:
            raise AuthenticationError("datagram tag did not verify") from None


def _key_wrap_kek(
    shared: bytes, ephemeral_public: bytes, receiver_public: bytes, context: bytes
) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=SESSION_KEY_SIZE,
        salt=ephemeral_public + receiver_public,
        info=_WRAP_INFO + context,
    )
    return hkdf.derive(shared)


def wrap_session_key(
    receiver_public: ReceiverPublicKey, session_key: bytes, ephemeral_seed: bytes, context: bytes
) -> bytes:
    """Wrap ``session_key`` so only the holder of the receiver's private key can read it.

    Ephemeral X25519 (made from ``ephemeral_seed``, 32 fresh random bytes) with the
    receiver's key, HKDF-SHA256 bound to both public keys and to ``context`` (session id, key
    id, cipher), then AES-256-GCM. The KEK is new for every ephemeral key, so the zero nonce
    is used once. Returns ``WRAPPED_KEY_SIZE`` bytes: ephemeral public key, ciphertext, tag.
    """
    if len(session_key) != SESSION_KEY_SIZE:
        raise LocalProtocolError(f"session key is {len(session_key)} bytes, expected 32")
    if len(ephemeral_seed) != 32:
        raise LocalProtocolError(f"ephemeral seed is {len(ephemeral_seed)} bytes, expected 32")
    ephemeral = X25519PrivateKey.from_private_bytes(ephemeral_seed)
    ephemeral_public = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    try:
        shared = ephemeral.exchange(receiver_public._key)
    except ValueError:
        raise LocalProtocolError("key exchange with the receiver public key failed") from None
    kek = _key_wrap_kek(shared, ephemeral_public, receiver_public.raw, context)
    return ephemeral_public + AESGCM(kek).encrypt(_ZERO_NONCE, session_key, context)


def unwrap_session_key(
    receiver_private: ReceiverPrivateKey, wrapped: bytes, context: bytes
) -> bytes:
    """Inverse of ``wrap_session_key``; ``AuthenticationError`` if anything is off."""
    if len(wrapped) != WRAPPED_KEY_SIZE:
        raise AuthenticationError("wrapped key has the wrong size")
    ephemeral_public = wrapped[:PUBLIC_KEY_SIZE]
    shared = receiver_private.exchange(ephemeral_public)
    kek = _key_wrap_kek(shared, ephemeral_public, receiver_private.public_key.raw, context)
    try:
        return AESGCM(kek).decrypt(_ZERO_NONCE, wrapped[PUBLIC_KEY_SIZE:], context)
    except InvalidTag:
        raise AuthenticationError("wrapped key did not verify") from None
