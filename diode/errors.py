"""The whole exception tree of the diode.

Every error the package raises on purpose is a ``DiodeError``; code at a trust boundary
(the receiver's datagram loop, the CLI, the policy loader) catches ``DiodeError`` and turns
it into a counter, an event or a clear message, never into a crash::

    DiodeError
    +-- ConfigError                 a setting or file the operator gave is wrong
    |   +-- KeyFileError            a key file is missing, malformed or readable by others
    +-- ProtocolError               something on the wire is wrong
    |   +-- LocalProtocolError      we were asked to send something the protocol forbids
    |   +-- RemoteProtocolError     a datagram we received is not acceptable
    |       +-- MalformedDatagramError   bad magic/version/type/length: cannot even be parsed
    |       +-- AuthenticationError tag or signature did not verify (one opaque error)
    |       +-- ReplayError         old session, or block far outside the receive window
    |       +-- DecodeError         authenticated, but the payload inside is not valid
    +-- FECError                    the erasure codec was given inconsistent symbols
    +-- PolicyError                 a policy file is invalid or cannot be applied
    |   +-- PolicyValidationError   carries a list of (file, line, message) problems
    +-- AuditError                  the audit log cannot be written or read
    |   +-- AuditVerificationError  the chain is broken: names the first bad entry
    +-- KafkaError                  a Kafka cluster did something we cannot handle
    +-- TransportError              a socket refused a datagram for good (EMSGSIZE, ...)
    +-- BenchmarkError              a measurement's own check failed: its figure means nothing
    +-- ServiceError                a long-running program cannot go on
        +-- SpoolError              the receiver's on-disk spool cannot be read or written
"""

from __future__ import annotations


class DiodeError(Exception):
    """Base of every error the diode raises on purpose."""


class ConfigError(DiodeError):
    """A setting, option or file given by the operator is wrong."""


class KeyFileError(ConfigError):
    """A key file is missing, malformed, of the wrong kind, or readable by others."""


class ProtocolError(DiodeError):
    """Something about the wire protocol is wrong."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol forbids (a bug or a bad config)."""


class RemoteProtocolError(ProtocolError):
    """A received datagram is not acceptable; the receiver rejects it and counts it."""

    #: short machine-readable reason, used as the counter label and in audit entries
    reason: str = "malformed"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class MalformedDatagramError(RemoteProtocolError):
    """The datagram cannot be parsed: bad magic, version, type or a length that lies."""

    reason = "malformed"


class AuthenticationError(RemoteProtocolError):
    """A tag or signature did not verify. Deliberately says nothing more."""

    reason = "authentication"


class ReplayError(RemoteProtocolError):
    """The datagram belongs to an old session or lies far outside the receive window."""

    reason = "replay"


class DecodeError(RemoteProtocolError):
    """The datagram authenticated, but what it carries is not valid."""

    reason = "decode"


class FECError(DiodeError):
    """The erasure codec was given inconsistent symbols or parameters."""


class PolicyError(DiodeError):
    """A policy is invalid or cannot be applied."""


class PolicyValidationError(PolicyError):
    """A policy file failed validation; ``problems`` lists (file, line, message)."""

    def __init__(self, problems: list[tuple[str, int, str]]) -> None:
        self.problems = problems
        text = "\n".join(f"{f}:{line}: {msg}" for f, line, msg in problems)
        super().__init__(text or "invalid policy")


class AuditError(DiodeError):
    """The audit log cannot be written or read."""


class AuditVerificationError(AuditError):
    """The audit chain is broken; the message names the first bad entry."""


class KafkaError(DiodeError):
    """A Kafka cluster did something the diode cannot handle."""


class TransportError(DiodeError):
    """A socket refused an operation for good (a datagram too large, a send buffer that never
    drained). ``errno`` is the OS error number when there is one; ``sent`` says how many
    datagrams of the batch went out before the failure, so the caller knows where to resume."""

    def __init__(self, message: str, *, errno: int | None = None, sent: int = 0) -> None:
        super().__init__(message)
        self.errno = errno
        self.sent = sent


class BenchmarkError(DiodeError):
    """A benchmark's own check failed (records lost silently, a log that does not verify),
    so the figure it would report means nothing."""


class ServiceError(DiodeError):
    """A long-running program cannot go on."""


class SpoolError(ServiceError):
    """The receiver's on-disk spool cannot be read or written."""
