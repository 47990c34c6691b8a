"""UDP adapter: moves datagrams the protocol core made to the wire and back, fast and counted.

Owns the sockets of both ends and nothing above them: :class:`UdpSender` (a connected socket,
batching with UDP GSO, pacing with :class:`~diode.io.pacing.Pacer`, retry on a full queue) and
:class:`UdpReceiver` (a bound socket with the largest receive buffer allowed, batch reads into
one preallocated buffer, optional UDP GRO, the kernel's drop counter). Datagrams are opaque
``bytes`` here; what they mean is the protocol's business.

Linux specifics, by number because Python 3.11 does not export them: ``UDP_SEGMENT`` (103)
lets one ``sendmsg`` carry up to 64 equal-size datagrams (the last one may be shorter) that
the kernel splits, one system call instead of 64; ``UDP_GRO`` (104) is the receive-side
mirror, handing several datagrams of one flow to ``recvmsg`` at once with their segment size
in a control message. Both are detected at start and fall back to one datagram per call.

Failures are never silent: a full send queue (``ENOBUFS``/``EAGAIN``) is retried after a short
wait and counted; a datagram the kernel refuses for good (``EMSGSIZE``, ...) is counted and
raised as :class:`~diode.errors.TransportError`, saying how many of the batch went out; on
receive, a datagram larger than the configured payload size is counted and dropped (no
correctly configured sender makes one), and the kernel's own drops (receive buffer overrun)
are read back from the socket.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self

from diode.errors import ConfigError, TransportError
from diode.io.pacing import (
    IPV4_UDP_OVERHEAD,
    IPV6_UDP_OVERHEAD,
    Clock,
    Pacer,
    Sleep,
    per_datagram_overhead,
    precise_sleep,
)

log = logging.getLogger(__name__)

# Linux socket options Python 3.11 does not export.
UDP_SEGMENT: Final = 103
UDP_GRO: Final = 104
SO_SNDBUFFORCE: Final = 32
SO_RCVBUFFORCE: Final = 33
SO_MEMINFO: Final = 55
SK_MEMINFO_VARS: Final = 9
SK_MEMINFO_DROPS: Final = 8
IP_MTU_DISCOVER: Final = 10
IP_RECVERR: Final = 11
IPV6_RECVERR: Final = 25
IP_MTU: Final = 14
IPV6_MTU_DISCOVER: Final = 23
IPV6_MTU: Final = 24
PMTUDISC_DO: Final = 2
SO_BINDTODEVICE: Final = 25

#: UDP payload of a standard 1500-byte Ethernet MTU over IPv4
DEFAULT_PAYLOAD_SIZE: Final = 1472
#: UDP payload of a 9000-byte jumbo frame over IPv4: the largest datagram the diode uses
MAX_PAYLOAD_SIZE: Final = 8972
#: largest UDP payload of one IPv4 datagram, and so of one GSO send (all segments together)
MAX_GSO_BYTES: Final = 65507
#: segments per GSO send: 64 is the limit of every kernel with UDP GSO (Linux >= 4.18); newer
#: kernels accept up to 128, and a larger value is refused there with EINVAL (GSO then turns off)
DEFAULT_GSO_SEGMENTS: Final = 64
MAX_GSO_SEGMENTS: Final = 128
#: large enough for any UDP datagram, and for any GRO-coalesced train of them (<= 64 KiB)
RECV_BUFFER_SIZE: Final = 65536 + 4096
DEFAULT_SNDBUF: Final = 4 * 1024 * 1024
DEFAULT_RCVBUF: Final = 32 * 1024 * 1024
MIN_SOCKET_BUFFER: Final = 4096
MAX_SOCKET_BUFFER: Final = 1 << 30
#: Linux interface names are at most 15 bytes (IFNAMSIZ - 1)
MAX_INTERFACE_NAME: Final = 15
#: errors after which a GSO send is retried as single datagrams and GSO stays off:
#: EIO (the device cannot checksum the segments), EINVAL (a kernel limit, or a segment larger
#: than the route MTU), ENOPROTOOPT / EOPNOTSUPP (no UDP GSO at all)
GSO_FALLBACK_ERRNOS: Final = frozenset(
    {errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP}
)
#: transient: the queue towards the device is full; wait and send again
RETRY_ERRNOS: Final = frozenset({errno.ENOBUFS, errno.EAGAIN, errno.EWOULDBLOCK})
_RETRY_FIRST_WAIT_S: Final = 50e-6
_RETRY_MAX_WAIT_S: Final = 5e-3
_CMSG_INT_SPACE: Final = socket.CMSG_SPACE(4)
_GRO_SIZE: Final = struct.Struct("=i")
_SEGMENT_SIZE: Final = struct.Struct("=H")


def _errno_name(code: int | None) -> str:
    return errno.errorcode.get(code, str(code)).lower() if code is not None else "unknown"


def _check_int(name: str, value: object, low: int, high: int, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        extra = f" ({why})" if why else ""
        raise ConfigError(
            f"{name} {value!r} is out of range: expected an integer {low}..{high}{extra}"
        )


def _check_host(name: str, host: object) -> None:
    if not isinstance(host, str) or not host.strip() or host != host.strip():
        raise ConfigError(
            f"{name} {host!r} is not a host: expected an IPv4 or IPv6 address or a host name"
        )


def _check_interface(interface: object) -> None:
    if interface is None:
        return
    if (
        not isinstance(interface, str)
        or not interface
        or len(interface.encode()) > MAX_INTERFACE_NAME
        or "/" in interface
        or any(c.isspace() for c in interface)
    ):
        raise ConfigError(
            f"interface {interface!r} is not an interface name: expected 1..{MAX_INTERFACE_NAME} "
            "bytes without spaces or '/', such as 'eth1'"
        )


def _check_buffer(name: str, value: object) -> None:
    _check_int(name, value, MIN_SOCKET_BUFFER, MAX_SOCKET_BUFFER, "bytes")


def resolve(host: str, port: int, *, passive: bool = False, family: int = 0) -> tuple[int, Any]:
    """``(address family, socket address)`` of ``host``, an IP literal (``[::1]`` allowed)
    or a name. Raises :class:`ConfigError` naming the host when it does not resolve."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = socket.getaddrinfo(bare, port, family, socket.SOCK_DGRAM, 0, flags)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"cannot resolve host {host!r} (port {port}): {exc}") from exc
    for fam, _type, _proto, _canon, addr in infos:
        if fam in (socket.AF_INET, socket.AF_INET6):
            return int(fam), addr
    raise ConfigError(f"host {host!r} has no IPv4 or IPv6 address")


def _format(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _set_buffer(sock: socket.socket, force_option: int, option: int, size: int) -> int:
    """Set a socket buffer, beyond the sysctl cap when privileged; return the size granted.

    Linux doubles the value it stores (room for its bookkeeping) and reports the doubled
    value, so the comparable figure is half of what ``getsockopt`` says.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_option, size)
    except PermissionError:
        # Without CAP_NET_ADMIN the plain option is capped at net.core.[rw]mem_max.
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    return sock.getsockopt(socket.SOL_SOCKET, option) // 2


def _bind_interface(sock: socket.socket, interface: str) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
    except PermissionError as exc:
        raise ConfigError(
            f"binding to interface {interface!r} needs CAP_NET_RAW (or root): {exc}"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot bind to interface {interface!r}: {exc}") from exc


# ---------------------------------------------------------------------------------------------
# configuration and counters


@dataclass(frozen=True, slots=True)
class UdpSenderConfig:
    """Where and how fast to send.

    ``rate_bits_per_s`` (None: unpaced) counts what the link carries: UDP payload, IP and UDP
    headers and, with ``ethernet_framing``, the 38 bytes of Ethernet framing per frame (see
    :mod:`diode.io.pacing`). ``burst_bytes`` (None: 2 ms at the rate, and never less than one
    full GSO send) bounds what leaves back to back. ``gso=False`` forces one datagram per call.
    ``retry_timeout_s`` is how long a full send queue may last before the send fails.
    ``dont_fragment`` sets DF and checks the route MTU at start: the diode never relies on IP
    fragmentation, so an oversize datagram is an error, not a pair of fragments.
    """

    host: str
    port: int
    payload_size: int = DEFAULT_PAYLOAD_SIZE
    sndbuf_bytes: int = DEFAULT_SNDBUF
    source_host: str | None = None
    source_port: int = 0
    interface: str | None = None
    rate_bits_per_s: int | None = None
    burst_bytes: int | None = None
    ethernet_framing: bool = True
    gso: bool = True
    gso_max_segments: int = DEFAULT_GSO_SEGMENTS
    retry_timeout_s: float = 5.0
    dont_fragment: bool = True

    def __post_init__(self) -> None:
        _check_host("host", self.host)
        _check_int("port", self.port, 1, 65535)
        _check_int(
            "payload_size",
            self.payload_size,
            1,
            MAX_PAYLOAD_SIZE,
            "bytes of UDP payload; 1472 for a 1500 MTU, 8972 for a 9000 jumbo MTU",
        )
        _check_buffer("sndbuf_bytes", self.sndbuf_bytes)
        if self.source_host is not None:
            _check_host("source_host", self.source_host)
        _check_int("source_port", self.source_port, 0, 65535, "0: any")
        _check_interface(self.interface)
        if self.rate_bits_per_s is not None:
            _check_int("rate_bits_per_s", self.rate_bits_per_s, 1000, 400 * 10**9, "bit/s")
        if self.burst_bytes is not None:
            _check_int("burst_bytes", self.burst_bytes, 1, MAX_SOCKET_BUFFER)
        _check_int("gso_max_segments", self.gso_max_segments, 1, MAX_GSO_SEGMENTS)
        if (
            not isinstance(self.retry_timeout_s, int | float)
            or not 0 < self.retry_timeout_s <= 3600
        ):
            raise ConfigError(
                f"retry_timeout_s {self.retry_timeout_s!r} is out of range: expected 0 < s <= 3600"
            )


@dataclass(frozen=True, slots=True)
class UdpReceiverConfig:
    """Where to listen. ``port`` 0 picks a free port (see :attr:`UdpReceiver.local_address`).
    ``rcvbuf_bytes`` is asked for with SO_RCVBUFFORCE when privileged, else capped by
    ``net.core.rmem_max``; the receiver reports what it got. ``gro=False`` forces one
    datagram per call."""

    host: str = "0.0.0.0"
    port: int = 0
    payload_size: int = DEFAULT_PAYLOAD_SIZE
    rcvbuf_bytes: int = DEFAULT_RCVBUF
    interface: str | None = None
    gro: bool = True

    def __post_init__(self) -> None:
        _check_host("host", self.host)
        _check_int("port", self.port, 0, 65535, "0: any free port")
        _check_int(
            "payload_size",
            self.payload_size,
            1,
            MAX_PAYLOAD_SIZE,
            "bytes of UDP payload; 1472 for a 1500 MTU, 8972 for a 9000 jumbo MTU",
        )
        _check_buffer("rcvbuf_bytes", self.rcvbuf_bytes)
        _check_interface(self.interface)


def _frozen_errors(errors: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(errors))


@dataclass(frozen=True, slots=True)
class SenderCounters:
    """A snapshot of a sender's counters since it opened.

    ``wire_bytes_sent`` is what the pacer charged (payload + per-datagram overhead).
    ``errors`` maps a kind (``enobufs``, ``eagain``, ``econnrefused``, ``emsgsize``,
    ``oversize``, ``gso_eio``...) to how often it happened; ``retries`` counts sends
    repeated after a transient error.
    """

    datagrams_sent: int
    bytes_sent: int
    wire_bytes_sent: int
    send_calls: int
    gso_batches: int
    gso_datagrams: int
    retries: int
    pacing_waits: int
    pacing_wait_s: float
    gso_enabled: bool
    errors: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def error(self, kind: str) -> int:
        return self.errors.get(kind, 0)


@dataclass(frozen=True, slots=True)
class ReceiverCounters:
    """A snapshot of a receiver's counters since it opened.

    ``kernel_drops`` is what the kernel dropped on this socket (receive buffer full), read from
    the socket itself; None where Linux does not tell. The kernel counts packets as it holds
    them: with GRO on, one drop may be a coalesced train of up to 64 datagrams, so take it as
    "loss happened here, at least this much"; the protocol's gap accounting is exact.
    ``errors`` maps a kind (``oversize``, ``truncated``...) to the datagrams dropped for it.
    """

    datagrams_received: int
    bytes_received: int
    recv_calls: int
    gro_batches: int
    gro_datagrams: int
    kernel_drops: int | None
    gro_enabled: bool
    errors: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def error(self, kind: str) -> int:
        return self.errors.get(kind, 0)

    @property
    def dropped(self) -> int:
        """Every datagram that reached this host and was not delivered, whatever the reason."""
        return (self.kernel_drops or 0) + sum(self.errors.values())


# ---------------------------------------------------------------------------------------------
# sender


def _offload_off_reason(wanted: bool, name: str, probe: Callable[[], object]) -> str | None:
    """None when the UDP offload ``name`` (GSO, GRO) is on; otherwise why it is off.

    ``probe`` touches the socket option and raises ``OSError`` on a kernel without it."""
    if not wanted:
        return "disabled by configuration"
    try:
        probe()
    except OSError as exc:
        return f"kernel has no UDP {name} ({_errno_name(exc.errno).upper()})"
    return None


class _UdpEnd:
    """What both ends do the same with their one socket: address, descriptor, closing,
    error counts."""

    _sock: socket.socket
    _errors: dict[str, int]

    @property
    def local_address(self) -> tuple[str, int]:
        addr = self._sock.getsockname()
        return str(addr[0]), int(addr[1])

    def fileno(self) -> int:
        """For a service's selector (a receiver's is readable when ``recv_batch`` has
        something)."""
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _count(self, kind: str, n: int = 1) -> None:
        self._errors[kind] = self._errors.get(kind, 0) + n


class UdpSender(_UdpEnd):
    """A connected UDP socket that sends batches of datagrams at the configured rate.

    ``clock`` (monotonic seconds) and ``wait`` (block for so many seconds) are injectable so
    the pacing can be driven without real time; by default they are ``time.perf_counter`` and
    :func:`~diode.io.pacing.precise_sleep`.
    """

    def __init__(
        self,
        config: UdpSenderConfig,
        *,
        clock: Clock = time.perf_counter,
        wait: Sleep | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._wait: Sleep = wait if wait is not None else self._precise_wait
        family, self._remote = resolve(config.host, config.port)
        self.ipv6 = family == socket.AF_INET6
        self._ip_overhead = IPV6_UDP_OVERHEAD if self.ipv6 else IPV4_UDP_OVERHEAD
        self._overhead = per_datagram_overhead(
            ipv6=self.ipv6, ethernet_framing=config.ethernet_framing
        )
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sndbuf_bytes = _set_buffer(
                self._sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, config.sndbuf_bytes
            )
            if config.interface is not None:
                _bind_interface(self._sock, config.interface)
            if config.source_host is not None or config.source_port:
                src_host = config.source_host or ("::" if self.ipv6 else "0.0.0.0")
                _fam, src = resolve(src_host, config.source_port, passive=True, family=family)
                try:
                    self._sock.bind(src)
                except OSError as exc:
                    raise ConfigError(f"cannot bind the sender to {_format(src)}: {exc}") from exc
            # Without IP_RECVERR, Linux reports a full device queue (ENOBUFS) as success and
            # drops the datagram; with it the send fails and is retried here.
            recverr = (
                (socket.IPPROTO_IPV6, IPV6_RECVERR)
                if self.ipv6
                else (socket.IPPROTO_IP, IP_RECVERR)
            )
            self._sock.setsockopt(*recverr, 1)
            if config.dont_fragment:
                level, option = (
                    (socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER)
                    if self.ipv6
                    else (socket.IPPROTO_IP, IP_MTU_DISCOVER)
                )
                self._sock.setsockopt(level, option, PMTUDISC_DO)
            try:
                self._sock.connect(self._remote)
            except OSError as exc:
                raise ConfigError(f"cannot send to {_format(self._remote)}: {exc}") from exc
            self.path_mtu = self._route_mtu()
            if (
                config.dont_fragment
                and self.path_mtu is not None
                and config.payload_size + self._ip_overhead > self.path_mtu
            ):
                raise ConfigError(
                    f"payload_size {config.payload_size} + {self._ip_overhead} header bytes "
                    f"exceeds the MTU {self.path_mtu} of the route to "
                    f"{_format(self._remote)}: expected payload_size <= "
                    f"{self.path_mtu - self._ip_overhead}"
                )
        except BaseException:
            self._sock.close()
            raise
        # Detected once: the option exists on every kernel with UDP GSO.
        self.gso_disabled_reason = _offload_off_reason(
            config.gso, "GSO", lambda: self._sock.getsockopt(socket.SOL_UDP, UDP_SEGMENT)
        )
        self._max_segments = config.gso_max_segments
        self.pacer: Pacer | None = None
        if config.rate_bits_per_s is not None:
            rate = config.rate_bits_per_s / 8
            burst = config.burst_bytes
            if burst is None:
                full_send = MAX_GSO_BYTES + self._max_segments * self._overhead
                burst = max(int(rate * 0.002), full_send)
            self.pacer = Pacer(rate, burst, clock)
        self._datagrams = 0
        self._bytes = 0
        self._wire = 0
        self._calls = 0
        self._gso_batches = 0
        self._gso_datagrams = 0
        self._retries = 0
        self._waits = 0
        self._wait_s = 0.0
        self._errors: dict[str, int] = {}

    # -- public ---------------------------------------------------------------------------

    @property
    def gso_enabled(self) -> bool:
        return self.gso_disabled_reason is None

    @property
    def remote_address(self) -> tuple[str, int]:
        return str(self._remote[0]), int(self._remote[1])

    def send(self, datagram: bytes) -> None:
        """Send one datagram (paced)."""
        self.send_many((datagram,))

    def send_many(self, datagrams: Sequence[bytes]) -> int:
        """Send every datagram of the batch, in order, at the configured rate; return how many.

        Consecutive datagrams of one size (and one shorter last one) go out in a single GSO
        call when GSO is on. Raises :class:`TransportError` (``.sent`` = datagrams of this
        batch already sent) when a datagram is larger than ``payload_size``, is refused for
        good by the kernel, or the send queue stays full for ``retry_timeout_s``.
        """
        n = len(datagrams)
        limit_size = self.config.payload_size
        gso = self.gso_enabled
        max_segments = self._max_segments
        i = 0
        while i < n:
            size = len(datagrams[i])
            if size > limit_size:
                self._count("oversize")
                raise TransportError(
                    f"datagram {i} of the batch is {size} bytes, larger than payload_size "
                    f"{limit_size}: not sent",
                    sent=i,
                )
            # A run: what one pacing step covers and, with GSO, one system call.
            j = i + 1
            run_gso = gso and size > 0
            if run_gso:
                stop = min(n, i + min(max_segments, MAX_GSO_BYTES // size))
                while j < stop and len(datagrams[j]) == size:
                    j += 1
                if j < stop and 0 < len(datagrams[j]) < size:
                    j += 1  # the last segment of a GSO send may be shorter
                total = size * (j - i - 1) + len(datagrams[j - 1])
            else:
                # Pace plain sends in groups too, so that waits stay long enough to sleep.
                stop = min(n, i + max_segments)
                total = size
                while j < stop:
                    nxt = len(datagrams[j])
                    if nxt > limit_size or total + nxt > MAX_GSO_BYTES:
                        break
                    total += nxt
                    j += 1
            count = j - i
            if self.pacer is not None:
                delay = self.pacer.delay_for(total + count * self._overhead, self._clock())
                if delay > 0:
                    self._waits += 1
                    self._wait_s += delay
                    self._wait(delay)
            try:
                if count > 1 and run_gso:
                    if self._send_gso(datagrams[i:j], size, i):
                        self._gso_batches += 1
                        self._gso_datagrams += count
                    else:
                        gso = False
                        for k in range(i, j):
                            self._send_one(datagrams[k], k)
                else:
                    for k in range(i, j):
                        self._send_one(datagrams[k], k)
            except TransportError as exc:
                # Count what of this run did leave before the failure.
                done = datagrams[i : exc.sent]
                payload = sum(map(len, done))
                self._datagrams += len(done)
                self._bytes += payload
                self._wire += payload + len(done) * self._overhead
                raise
            self._datagrams += count
            self._bytes += total
            self._wire += total + count * self._overhead
            i = j
        return n

    def counters(self) -> SenderCounters:
        return SenderCounters(
            datagrams_sent=self._datagrams,
            bytes_sent=self._bytes,
            wire_bytes_sent=self._wire,
            send_calls=self._calls,
            gso_batches=self._gso_batches,
            gso_datagrams=self._gso_datagrams,
            retries=self._retries,
            pacing_waits=self._waits,
            pacing_wait_s=self._wait_s,
            gso_enabled=self.gso_enabled,
            errors=_frozen_errors(self._errors),
        )

    # -- internals ------------------------------------------------------------------------

    def _precise_wait(self, seconds: float) -> None:
        precise_sleep(seconds, clock=self._clock)

    def _route_mtu(self) -> int | None:
        level, option = (
            (socket.IPPROTO_IPV6, IPV6_MTU) if self.ipv6 else (socket.IPPROTO_IP, IP_MTU)
        )
        try:
            return int(self._sock.getsockopt(level, option))
        except OSError:
            return None  # not Linux, or no route yet: the kernel will still refuse oversize

    def _drain_error_queue(self) -> None:
        """Discard queued ICMP reports (IP_RECVERR keeps them) so they cannot pile up."""
        for _ in range(1024):
            try:
                self._sock.recvmsg(1, 1024, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except OSError:
                return

    def _send_gso(self, run: Sequence[bytes], size: int, index: int) -> bool:
        """One GSO send of ``run``; False if GSO failed for good (it is then off)."""
        cmsg = [(socket.SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(size))]
        retry_since: float | None = None
        while True:
            self._calls += 1
            try:
                self._sock.sendmsg(run, cmsg)
                return True
            except OSError as exc:
                if exc.errno in GSO_FALLBACK_ERRNOS:
                    self._count(f"gso_{_errno_name(exc.errno)}")
                    self.gso_disabled_reason = (
                        f"GSO send of {len(run)} x {size} bytes failed "
                        f"({_errno_name(exc.errno).upper()}: {exc.strerror}); "
                        "sending one datagram per call"
                    )
                    log.warning("%s", self.gso_disabled_reason)
                    return False
                retry_since = self._transient_or_raise(exc, index, retry_since)

    def _send_one(self, datagram: bytes, index: int) -> None:
        retry_since: float | None = None
        while True:
            self._calls += 1
            try:
                self._sock.send(datagram)
                return
            except OSError as exc:
                retry_since = self._transient_or_raise(exc, index, retry_since)

    def _transient_or_raise(self, exc: OSError, index: int, retry_since: float | None) -> float:
        """Count ``exc``; wait and return the retry start if it is transient, else raise."""
        code = exc.errno
        name = _errno_name(code)
        self._count(name)
        now = self._clock()
        if code == errno.ECONNREFUSED:
            # An ICMP port-unreachable for an earlier datagram (impossible through a real diode,
            # common on a test bench); this datagram was not sent. Send it again at once.
            self._retries += 1
            self._drain_error_queue()
            return now if retry_since is None else retry_since
        if code in RETRY_ERRNOS:
            started = now if retry_since is None else retry_since
            if now - started > self.config.retry_timeout_s:
                raise TransportError(
                    f"send to {_format(self._remote)} failed: the send queue stayed full "
                    f"({name.upper()}) for {now - started:.3f} s, more than retry_timeout_s "
                    f"{self.config.retry_timeout_s}",
                    errno=code,
                    sent=index,
                ) from exc
            self._retries += 1
            # Back off 50 us, growing with the time already waited, up to 5 ms: a full device
            # queue usually drains in microseconds, a stuck one should not be polled hot.
            self._wait(min(_RETRY_MAX_WAIT_S, _RETRY_FIRST_WAIT_S + (now - started)))
            return started
        if code == errno.EMSGSIZE:
            raise TransportError(
                f"datagram {index} of the batch refused by the kernel (EMSGSIZE): too large for "
                f"the route to {_format(self._remote)} (MTU {self._route_mtu()}, "
                f"{self._ip_overhead} bytes of IP/UDP headers)",
                errno=code,
                sent=index,
            ) from exc
        raise TransportError(
            f"send to {_format(self._remote)} failed ({name.upper()}): {exc.strerror}",
            errno=code,
            sent=index,
        ) from exc


# ---------------------------------------------------------------------------------------------
# receiver


class UdpReceiver(_UdpEnd):
    """A bound UDP socket read in batches.

    After opening, :attr:`rcvbuf_bytes` is the receive buffer granted and
    :attr:`rcvbuf_warning` a sentence for the operator when it is smaller than asked
    (None otherwise): a short buffer loses datagrams in bursts even when the receiver keeps
    up on average.
    """

    def __init__(self, config: UdpReceiverConfig) -> None:
        self.config = config
        family, local = resolve(config.host, config.port, passive=True)
        self.ipv6 = family == socket.AF_INET6
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.rcvbuf_bytes = _set_buffer(
                self._sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, config.rcvbuf_bytes
            )
            self.rcvbuf_warning: str | None = None
            if self.rcvbuf_bytes < config.rcvbuf_bytes:
                self.rcvbuf_warning = (
                    f"receive buffer is {self.rcvbuf_bytes} bytes, {config.rcvbuf_bytes} asked: "
                    "bursts may overflow it; raise net.core.rmem_max or give the receiver "
                    "CAP_NET_ADMIN"
                )
                log.warning("%s", self.rcvbuf_warning)
            if config.interface is not None:
                _bind_interface(self._sock, config.interface)
            try:
                self._sock.bind(local)
            except OSError as exc:
                raise ConfigError(f"cannot listen on {_format(local)}: {exc}") from exc
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self.gro_disabled_reason = _offload_off_reason(
            config.gro, "GRO", lambda: self._sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        )
        self._buffer = bytearray(RECV_BUFFER_SIZE)
        self._view = memoryview(self._buffer)
        self._pending: deque[bytes] = deque()
        self._poll = select.poll()
        self._poll.register(self._sock.fileno(), select.POLLIN)
        self._inode = os.fstat(self._sock.fileno()).st_ino
        self._datagrams = 0
        self._bytes = 0
        self._calls = 0
        self._gro_batches = 0
        self._gro_datagrams = 0
        self._errors: dict[str, int] = {}

    @property
    def gro_enabled(self) -> bool:
        return self.gro_disabled_reason is None

    def recv_batch(self, max_datagrams: int, timeout: float | None) -> list[bytes]:
        """Up to ``max_datagrams`` datagrams, in arrival order.

        Returns at once with what is queued; if nothing is, waits up to ``timeout`` seconds
        (None: forever, 0: not at all) for the first one, then takes what is queued by then.
        An empty list means the timeout passed.
        """
        if max_datagrams < 1:
            raise ValueError(f"max_datagrams {max_datagrams} must be at least 1")
        out: list[bytes] = []
        self._fill(out, max_datagrams)
        if out or timeout == 0:
            return out
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout {timeout} must be >= 0 or None")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not out:
            if deadline is None:
                wait_ms = -1
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait_ms = max(1, int(left * 1000 + 0.999))
            if self._poll.poll(wait_ms):
                self._fill(out, max_datagrams)
        return out

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped on this socket since it opened (buffer overruns)."""
        try:
            raw = self._sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * SK_MEMINFO_VARS)
        except OSError:
            return self._proc_drops()
        if len(raw) < 4 * (SK_MEMINFO_DROPS + 1):
            return self._proc_drops()
        return int(struct.unpack_from("=I", raw, 4 * SK_MEMINFO_DROPS)[0])

    def counters(self) -> ReceiverCounters:
        return ReceiverCounters(
            datagrams_received=self._datagrams,
            bytes_received=self._bytes,
            recv_calls=self._calls,
            gro_batches=self._gro_batches,
            gro_datagrams=self._gro_datagrams,
            kernel_drops=self.kernel_drops(),
            gro_enabled=self.gro_enabled,
            errors=_frozen_errors(self._errors),
        )

    def close(self) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(self._sock.fileno())
        super().close()

    # -- internals ------------------------------------------------------------------------

    def _fill(self, out: list[bytes], limit: int) -> None:
        pending = self._pending
        while pending and len(out) < limit:
            out.append(pending.popleft())
        if len(out) < limit:
            if self.gro_enabled:
                self._fill_gro(out, limit)
            else:
                self._fill_plain(out, limit)

    def _fill_plain(self, out: list[bytes], limit: int) -> None:
        recv_into = self._sock.recv_into
        buf, view = self._buffer, self._view
        max_size = self.config.payload_size
        got = nbytes = calls = 0
        want = limit - len(out)
        try:
            while got < want:
                calls += 1
                try:
                    n = recv_into(buf)
                except BlockingIOError:
                    break
                if n > max_size:
                    self._count("oversize")
                    continue
                out.append(view[:n].tobytes())
                got += 1
                nbytes += n
        finally:
            self._calls += calls
            self._datagrams += got
            self._bytes += nbytes

    def _fill_gro(self, out: list[bytes], limit: int) -> None:
        recvmsg_into = self._sock.recvmsg_into
        buffers = [self._buffer]
        view = self._view
        max_size = self.config.payload_size
        pending = self._pending
        while len(out) < limit:
            self._calls += 1
            try:
                n, ancdata, flags, _addr = recvmsg_into(buffers, _CMSG_INT_SPACE)
            except BlockingIOError:
                return
            if flags & socket.MSG_TRUNC:
                self._count("truncated")
                continue
            segment = 0
            for level, kind, data in ancdata:
                if level == socket.SOL_UDP and kind == UDP_GRO and len(data) >= _GRO_SIZE.size:
                    segment = _GRO_SIZE.unpack_from(data)[0]
            if segment <= 0 or segment >= n:
                if n > max_size:
                    self._count("oversize")
                    continue
                out.append(view[:n].tobytes())
                self._datagrams += 1
                self._bytes += n
                continue
            parts = (n + segment - 1) // segment
            if segment > max_size:
                # Every full segment is oversize; only a short last one may fit.
                last = n - (parts - 1) * segment
                if last < segment and last <= max_size:
                    self._count("oversize", parts - 1)
                    out.append(view[n - last : n].tobytes())
                    self._datagrams += 1
                    self._bytes += last
                else:
                    self._count("oversize", parts)
                continue
            self._gro_batches += 1
            self._gro_datagrams += parts
            self._datagrams += parts
            self._bytes += n
            # One copy out of the shared buffer, then slices: 2x cheaper than a copy per segment.
            whole = view[:n].tobytes()
            chunks = [whole[off : off + segment] for off in range(0, n, segment)]
            room = limit - len(out)
            if parts <= room:
                out.extend(chunks)
            else:
                out.extend(chunks[:room])
                pending.extend(chunks[room:])

    def _proc_drops(self) -> int | None:
        """The ``drops`` column of /proc/net/udp[6] for this socket's inode."""
        path = "/proc/net/udp6" if self.ipv6 else "/proc/net/udp"
        try:
            with open(path, encoding="ascii") as table:
                lines = table.read().splitlines()
        except OSError:
            return None
        if not lines:
            return None
        header = lines[0].split()
        try:
            inode_col = header.index("inode")
        except ValueError:
            return None
        # The header names "tx_queue rx_queue" and "tr tm->when" as two columns each but rows
        # hold them as one token each; count from the inode column instead.
        target = str(self._inode)
        for line in lines[1:]:
            cols = line.split()
            idx = inode_col - 2
            if len(cols) > idx and cols[idx] == target:
                return int(cols[-1])
        return None


__all__ = [
    "DEFAULT_PAYLOAD_SIZE",
    "MAX_GSO_BYTES",
    "MAX_PAYLOAD_SIZE",
    "ReceiverCounters",
    "SenderCounters",
    "UdpReceiver",
    "UdpReceiverConfig",
    "UdpSender",
    "UdpSenderConfig",
    "resolve",
]
