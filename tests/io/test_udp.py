"""UdpSender and UdpReceiver over real sockets on 127.0.0.1 and ::1.

Failures the loopback cannot produce on demand (a device without GSO, a full device queue,
EMSGSIZE) are injected by wrapping the sender's socket; everything else is real. Nothing
sleeps: pacing runs on a fake clock, and the receiver's timeout is only waited when the
test is about the timeout.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from diode.errors import ConfigError, TransportError
from diode.io import (
    MAX_GSO_BYTES,
    UdpReceiver,
    UdpReceiverConfig,
    UdpSender,
    UdpSenderConfig,
)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


FAMILIES = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param(
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback"),
    ),
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


class FlakySocket:
    """Wraps the sender's socket; raises the queued errors before passing calls through."""

    def __init__(self, real: socket.socket, *, send: list[int], sendmsg: list[int]) -> None:
        self.real = real
        self.send_errors = list(send)
        self.sendmsg_errors = list(sendmsg)
        self.sendmsg_calls = 0

    def send(self, data: bytes) -> int:
        if self.send_errors:
            code = self.send_errors.pop(0)
            raise OSError(code, os.strerror(code))
        return self.real.send(data)

    def sendmsg(self, buffers: Any, ancdata: Any) -> int:
        self.sendmsg_calls += 1
        if self.sendmsg_errors:
            code = self.sendmsg_errors.pop(0)
            raise OSError(code, os.strerror(code))
        return self.real.sendmsg(buffers, ancdata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _mixed(
    n: int, seed: int, sizes: tuple[int, ...] = (1472, 1472, 1472, 1000, 1, 700)
) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(rnd.choice(sizes)) for _ in range(n)]


def _drain(
    receiver: UdpReceiver, expected: int, batch: int = 100, *, settle: float = 5.0
) -> list[bytes]:
    """Read until ``expected`` datagrams (or what the receiver counts as dropped) are
    accounted for. Loopback usually delivers during the send itself, so this returns at
    once; ``settle`` only bounds the wait when a busy host defers delivery."""
    got: list[bytes] = []
    deadline = time.monotonic() + settle
    while len(got) + receiver.counters().dropped < expected:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        got += receiver.recv_batch(batch, left)
    return got


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[UdpReceiver]:
    host, gro = getattr(request, "param", ("127.0.0.1", True))
    with UdpReceiver(UdpReceiverConfig(host=host, gro=gro)) as r:
        yield r


def _sender(receiver: UdpReceiver, clock: FakeClock | None = None, **kw: Any) -> UdpSender:
    host, port = receiver.local_address
    config = UdpSenderConfig(host=host, port=port, **kw)
    if clock is None:
        return UdpSender(config)
    return UdpSender(config, clock=clock, wait=clock.wait)


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", FAMILIES)
@pytest.mark.parametrize("gso", [True, False], ids=["gso", "plain-send"])
@pytest.mark.parametrize("gro", [True, False], ids=["gro", "recv-into"])
def test_round_trip_mixed_sizes(host: str, gso: bool, gro: bool) -> None:
    datagrams = _mixed(600, seed=7)
    with (
        UdpReceiver(UdpReceiverConfig(host=host, gro=gro)) as receiver,
        _sender(receiver, gso=gso) as sender,
    ):
        assert sender.ipv6 == (":" in host)
        assert sender.send_many(datagrams) == len(datagrams)
        got = _drain(receiver, len(datagrams))
        sent, received = sender.counters(), receiver.counters()
    assert got == datagrams
    assert sent.datagrams_sent == received.datagrams_received == len(datagrams)
    assert sent.bytes_sent == received.bytes_received == sum(map(len, datagrams))
    assert received.kernel_drops == 0
    assert received.dropped == 0
    assert sent.retries == 0
    assert dict(sent.errors) == {}
    if gso and sender.gso_enabled:
        assert sent.gso_batches > 0
        assert sent.send_calls < len(datagrams)
        assert sent.gso_datagrams <= len(datagrams)
    else:
        assert sent.gso_batches == 0
        assert sent.send_calls == len(datagrams)
    if gro and gso and receiver.gro_enabled and sender.gso_enabled:
        # loopback keeps a GSO send whole for a GRO socket: fewer reads than datagrams
        assert received.gro_batches > 0
        assert received.recv_calls < len(datagrams)


def test_bracketed_ipv6_literal_is_accepted() -> None:
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    with (
        UdpReceiver(UdpReceiverConfig(host="[::1]")) as receiver,
        UdpSender(UdpSenderConfig(host="[::1]", port=receiver.local_address[1])) as sender,
    ):
        sender.send(b"hello")
        assert receiver.recv_batch(10, 0) == [b"hello"]
        assert receiver.ipv6


def test_gso_groups_equal_sizes_within_kernel_limits(receiver: UdpReceiver) -> None:
    with _sender(receiver) as sender:
        if not sender.gso_enabled:
            pytest.skip(f"no UDP GSO here: {sender.gso_disabled_reason}")
        # 1000-byte datagrams: 64 per call (the segment limit)
        sender.send_many([bytes([i % 256]) * 1000 for i in range(64 * 3)])
        assert sender.counters().gso_batches == 3
        assert sender.counters().send_calls == 3
        # 1472-byte datagrams: 44 per call (44 * 1472 <= 65507 < 45 * 1472)
        assert MAX_GSO_BYTES // 1472 == 44
        sender.send_many([b"x" * 1472] * 100)
        c = sender.counters()
    assert c.gso_batches == 3 + 3
    assert c.gso_datagrams == 192 + 100
    assert c.send_calls == 6
    got = _drain(receiver, 292)
    assert got[:192] == [bytes([i % 256]) * 1000 for i in range(192)]
    assert got[192:] == [b"x" * 1472] * 100


def test_last_segment_may_be_shorter(receiver: UdpReceiver) -> None:
    batch = [bytes([i]) * 1000 for i in range(10)] + [b"short" * 60] + [b"z" * 1000] * 5
    with _sender(receiver) as sender:
        if not sender.gso_enabled:
            pytest.skip(f"no UDP GSO here: {sender.gso_disabled_reason}")
        sender.send_many(batch)
        c = sender.counters()
    # ten full segments and the short one in one call; the next run starts after it
    assert c.gso_batches == 2
    assert c.send_calls == 2
    assert c.gso_datagrams == 16
    assert _drain(receiver, len(batch)) == batch


def test_a_longer_datagram_starts_a_new_run(receiver: UdpReceiver) -> None:
    batch = [b"a" * 500] * 3 + [b"b" * 900] + [b"c" * 500] * 2
    with _sender(receiver) as sender:
        if not sender.gso_enabled:
            pytest.skip(f"no UDP GSO here: {sender.gso_disabled_reason}")
        sender.send_many(batch)
        assert sender.counters().send_calls == 3
    assert _drain(receiver, len(batch)) == batch


def test_empty_datagrams_go_alone_and_keep_gso_on(receiver: UdpReceiver) -> None:
    batch = [b"", b"a" * 10, b"", b"b" * 10, b"b" * 10, b""]
    with _sender(receiver) as sender:
        gso = sender.gso_enabled
        sender.send_many(batch)
        assert sender.gso_enabled == gso
        c = sender.counters()
    assert dict(c.errors) == {}
    assert c.datagrams_sent == 6
    assert _drain(receiver, 6) == batch


def test_gso_off_by_flag_still_delivers(receiver: UdpReceiver) -> None:
    batch = [b"q" * 1200] * 50
    with _sender(receiver, gso=False) as sender:
        assert not sender.gso_enabled
        assert sender.gso_disabled_reason == "disabled by configuration"
        sender.send_many(batch)
        c = sender.counters()
    assert (c.gso_batches, c.send_calls, c.datagrams_sent) == (0, 50, 50)
    assert _drain(receiver, 50) == batch


@pytest.mark.parametrize("code", [errno.EIO, errno.EINVAL, errno.ENOPROTOOPT])
def test_gso_failure_at_run_time_falls_back_and_stays_off(receiver: UdpReceiver, code: int) -> None:
    batch = [bytes([i]) * 800 for i in range(20)]
    with _sender(receiver) as sender:
        if not sender.gso_enabled:
            pytest.skip(f"no UDP GSO here: {sender.gso_disabled_reason}")
        flaky = FlakySocket(sender._sock, send=[], sendmsg=[code])
        sender._sock = flaky  # type: ignore[assignment]
        sender.send_many(batch)
        sender.send_many(batch)
        c = sender.counters()
        assert not sender.gso_enabled
        assert sender.gso_disabled_reason is not None
        assert errno.errorcode[code] in sender.gso_disabled_reason
    assert flaky.sendmsg_calls == 1  # tried once, never again
    assert c.error(f"gso_{errno.errorcode[code].lower()}") == 1
    assert c.gso_batches == 0
    assert c.datagrams_sent == 40
    assert _drain(receiver, 40) == batch + batch


# -- transient and permanent send errors ----------------------------------------------------


@pytest.mark.parametrize("gso", [True, False])
def test_full_queue_is_retried_and_counted(receiver: UdpReceiver, gso: bool) -> None:
    clock = FakeClock()
    batch = [b"r" * 1000] * 8
    with _sender(receiver, clock, gso=gso, sndbuf_bytes=1 << 20) as sender:
        errs = [errno.ENOBUFS, errno.EAGAIN, errno.ENOBUFS]
        sender._sock = FlakySocket(  # type: ignore[assignment]
            sender._sock, send=errs if not sender.gso_enabled else [], sendmsg=errs
        )
        assert sender.send_many(batch) == 8
        c = sender.counters()
    assert c.retries == 3
    assert c.error("enobufs") == 2
    assert c.error("eagain") == 1
    assert len(clock.waits) == 3
    assert all(0 < w <= 0.005 for w in clock.waits)
    assert _drain(receiver, 8) == batch


def test_queue_that_stays_full_fails_after_the_retry_timeout(receiver: UdpReceiver) -> None:
    clock = FakeClock()
    with _sender(receiver, clock, gso=False, retry_timeout_s=0.05) as sender:
        sender._sock = FlakySocket(  # type: ignore[assignment]
            sender._sock, send=[errno.ENOBUFS] * 10_000, sendmsg=[]
        )
        with pytest.raises(TransportError, match=r"stayed full \(ENOBUFS\)") as info:
            sender.send_many([b"x"])
        c = sender.counters()
    assert info.value.errno == errno.ENOBUFS
    assert info.value.sent == 0
    assert 0.05 < clock.now < 0.06
    assert c.datagrams_sent == 0
    assert c.error("enobufs") == c.retries + 1


def test_refused_datagram_raises_with_its_index(receiver: UdpReceiver) -> None:
    batch = [b"a" * 100, b"b" * 200, b"c" * 300]
    with _sender(receiver, gso=False) as sender:
        # the first send goes through, the second is refused for good
        real = sender._sock
        calls = {"n": 0}

        class TooBig(FlakySocket):
            def send(self, data: bytes) -> int:
                calls["n"] += 1
                if calls["n"] == 2:
                    raise OSError(errno.EMSGSIZE, "Message too long")
                return self.real.send(data)

        sender._sock = TooBig(real, send=[], sendmsg=[])  # type: ignore[assignment]
        with pytest.raises(TransportError, match="EMSGSIZE") as info:
            sender.send_many(batch)
        c = sender.counters()
    assert info.value.sent == 1
    assert info.value.errno == errno.EMSGSIZE
    assert c.error("emsgsize") == 1
    assert (c.datagrams_sent, c.bytes_sent) == (1, 100)
    assert _drain(receiver, 1) == [b"a" * 100]
    assert receiver.recv_batch(10, 0) == []


def test_datagram_larger_than_payload_size_is_not_sent(receiver: UdpReceiver) -> None:
    with _sender(receiver, payload_size=1000) as sender:
        with pytest.raises(TransportError, match="1001 bytes, larger than payload_size 1000") as e:
            sender.send_many([b"a" * 1000, b"b" * 10, b"c" * 1001, b"d"])
        c = sender.counters()
    assert e.value.sent == 2
    assert c.error("oversize") == 1
    assert c.datagrams_sent == 2
    assert _drain(receiver, 2) == [b"a" * 1000, b"b" * 10]
    assert receiver.recv_batch(10, 0) == []


def test_icmp_refusal_from_a_closed_port_is_retried_not_lost() -> None:
    # Nobody listens: loopback answers with ICMP port unreachable, which a real diode cannot.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with UdpSender(UdpSenderConfig(host="127.0.0.1", port=port, gso=False)) as sender:
        sender.send_many([b"x"] * 5)
        c = sender.counters()
    assert c.datagrams_sent == 5
    assert c.error("econnrefused") == c.retries
    assert c.retries >= 1


# -- pacing through the sender --------------------------------------------------------------


@pytest.mark.parametrize("gso", [True, False])
def test_sender_keeps_the_configured_rate(receiver: UdpReceiver, gso: bool) -> None:
    clock = FakeClock()
    rate_bits = 100_000_000
    burst = 20_000
    n, size = 300, 1000
    with _sender(receiver, clock, gso=gso, rate_bits_per_s=rate_bits, burst_bytes=burst) as sender:
        assert sender.pacer is not None
        for _ in range(3):
            sender.send_many([b"p" * size] * (n // 3))
        c = sender.counters()
    per_frame = size + 28 + 38
    assert c.wire_bytes_sent == n * per_frame
    # everything beyond the initial burst went out at exactly the rate
    assert clock.now == pytest.approx((n * per_frame - burst) / (rate_bits / 8), rel=1e-9)
    assert c.pacing_waits == len(clock.waits) > 0
    assert c.pacing_wait_s == pytest.approx(clock.now)
    assert len(_drain(receiver, n)) == n


def test_default_burst_covers_one_full_gso_send(receiver: UdpReceiver) -> None:
    with _sender(receiver, rate_bits_per_s=1_000_000) as sender:
        assert sender.pacer is not None
        assert sender.pacer.burst_bytes >= MAX_GSO_BYTES
    with _sender(receiver, rate_bits_per_s=10_000_000_000) as sender:
        assert sender.pacer is not None
        assert sender.pacer.burst_bytes == 2_500_000  # 2 ms at 10 Gbit/s


# -- receiver -------------------------------------------------------------------------------


def test_timeout_returns_an_empty_list(receiver: UdpReceiver) -> None:
    assert receiver.recv_batch(10, 0) == []
    assert receiver.recv_batch(10, 0.01) == []
    with pytest.raises(ValueError, match="max_datagrams"):
        receiver.recv_batch(0, 0)


def test_timeout_returns_early_when_data_is_there(receiver: UdpReceiver) -> None:
    with _sender(receiver) as sender:
        sender.send(b"early")
    assert receiver.recv_batch(10, 60.0) == [b"early"]


@pytest.mark.parametrize("gro", [True, False])
def test_batches_never_exceed_the_maximum_and_keep_order(gro: bool) -> None:
    batch = [i.to_bytes(2, "big") * 50 for i in range(130)]
    with (
        UdpReceiver(UdpReceiverConfig(host="127.0.0.1", gro=gro)) as receiver,
        _sender(receiver) as sender,
    ):
        sender.send_many(batch)
        got: list[bytes] = []
        deadline = time.monotonic() + 5.0
        while len(got) < len(batch) and time.monotonic() < deadline:
            more = receiver.recv_batch(7, 1.0)
            assert len(more) <= 7
            got += more
        assert receiver.recv_batch(7, 0) == []
    assert got == batch


@pytest.mark.parametrize("gro", [True, False])
def test_oversize_datagrams_are_dropped_and_counted(gro: bool) -> None:
    with (
        UdpReceiver(UdpReceiverConfig(host="127.0.0.1", payload_size=500, gro=gro)) as receiver,
        _sender(receiver) as sender,
    ):
        sender.send_many([b"k" * 400, *([b"o" * 800] * 5), b"k" * 500])
        got = _drain(receiver, 7)
        c = receiver.counters()
    assert got == [b"k" * 400, b"k" * 500]
    assert c.error("oversize") == 5
    assert c.datagrams_received == 2
    assert c.dropped == 5


def test_kernel_drops_are_reported() -> None:
    with (
        UdpReceiver(UdpReceiverConfig(host="127.0.0.1", rcvbuf_bytes=4096, gro=False)) as receiver,
        _sender(receiver, gso=False) as sender,
    ):
        sender.send_many([b"d" * 1000] * 300)
        got = _drain(receiver, 300)
        c = receiver.counters()
    assert c.kernel_drops is not None
    assert c.kernel_drops > 0
    assert len(got) + c.kernel_drops == 300
    assert c.dropped == c.kernel_drops


def test_proc_fallback_agrees_with_the_socket_counter() -> None:
    with (
        UdpReceiver(UdpReceiverConfig(host="127.0.0.1", rcvbuf_bytes=4096, gro=False)) as receiver,
        _sender(receiver, gso=False) as sender,
    ):
        sender.send_many([b"d" * 1000] * 50)
        direct = receiver.kernel_drops()
        from_proc = receiver._proc_drops()
    assert direct is not None and direct > 0
    assert from_proc in (None, direct)


def test_receive_buffer_is_reported_honestly() -> None:
    asked = 16 * 1024 * 1024
    with UdpReceiver(UdpReceiverConfig(host="127.0.0.1", rcvbuf_bytes=asked)) as receiver:
        granted = receiver.rcvbuf_bytes
        raw = receiver._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if receiver.rcvbuf_warning is None:
            assert granted >= asked
        else:
            assert granted < asked
            assert str(asked) in receiver.rcvbuf_warning
            assert "rmem_max" in receiver.rcvbuf_warning
    assert granted == raw // 2


def test_sender_binds_its_source_address(receiver: UdpReceiver) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with _sender(receiver, source_host="127.0.0.1", source_port=port) as sender:
        assert sender.local_address == ("127.0.0.1", port)
        assert sender.remote_address == receiver.local_address
        sender.send(b"from a fixed port")
    assert receiver.recv_batch(1, 0) == [b"from a fixed port"]


# -- configuration errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": 0}, r"port 0 is out of range: expected an integer 1\.\.65535"),
        ({"port": 70000}, r"port 70000 is out of range"),
        ({"port": True}, r"port True is out of range"),
        ({"host": ""}, r"host '' is not a host"),
        ({"host": " 10.0.0.1"}, r"host ' 10.0.0.1' is not a host"),
        ({"payload_size": 0}, r"payload_size 0 is out of range: expected an integer 1\.\.8972"),
        ({"payload_size": 9000}, r"payload_size 9000 .*8972 for a 9000 jumbo MTU"),
        ({"sndbuf_bytes": 100}, r"sndbuf_bytes 100 is out of range: expected an integer 4096"),
        ({"source_port": -1}, r"source_port -1 is out of range"),
        ({"interface": "a-very-long-interface-name"}, r"interface 'a-very-long-interface-name'"),
        ({"interface": "eth 0"}, r"not an interface name"),
        ({"rate_bits_per_s": 0}, r"rate_bits_per_s 0 is out of range"),
        ({"burst_bytes": 0}, r"burst_bytes 0 is out of range"),
        ({"gso_max_segments": 129}, r"gso_max_segments 129 is out of range: .*1\.\.128"),
        ({"retry_timeout_s": 0}, r"retry_timeout_s 0 is out of range"),
    ],
)
def test_bad_sender_config(kwargs: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"host": "127.0.0.1", "port": 9000}
    with pytest.raises(ConfigError, match=message):
        UdpSenderConfig(**{**base, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"port": -1}, r"port -1 is out of range: expected an integer 0\.\.65535"),
        ({"payload_size": 10_000}, r"payload_size 10000 is out of range"),
        ({"rcvbuf_bytes": 1 << 31}, r"rcvbuf_bytes 2147483648 is out of range"),
        ({"host": "\t"}, r"is not a host"),
    ],
)
def test_bad_receiver_config(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UdpReceiverConfig(**kwargs)


def test_unresolvable_host_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cannot resolve host 'no-such-host\.invalid'"):
        UdpSender(UdpSenderConfig(host="no-such-host.invalid", port=9000))


def test_port_in_use_is_a_config_error(receiver: UdpReceiver) -> None:
    host, port = receiver.local_address
    with pytest.raises(ConfigError, match=rf"cannot listen on {host}:{port}"):
        UdpReceiver(UdpReceiverConfig(host=host, port=port))


def test_source_of_the_other_family_is_a_config_error(receiver: UdpReceiver) -> None:
    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    with pytest.raises(ConfigError, match="cannot resolve host '::1'"):
        _sender(receiver, source_host="::1")


def test_missing_interface_is_a_config_error(receiver: UdpReceiver) -> None:
    with pytest.raises(ConfigError, match="interface 'nosuchif0'"):
        _sender(receiver, interface="nosuchif0")


def test_both_ends_can_bind_to_an_interface() -> None:
    try:
        receiver = UdpReceiver(UdpReceiverConfig(host="127.0.0.1", interface="lo"))
    except ConfigError as exc:
        if "CAP_NET_RAW" in str(exc):
            pytest.skip(str(exc))
        raise
    with receiver, _sender(receiver, interface="lo") as sender:
        sender.send_many([b"on lo"] * 3)
        assert _drain(receiver, 3) == [b"on lo"] * 3


@pytest.mark.parametrize("host", FAMILIES)
def test_sender_asks_the_kernel_to_report_a_full_queue(host: str) -> None:
    """Without IP_RECVERR Linux turns ENOBUFS into a silent drop; the sender must see it."""
    with (
        UdpReceiver(UdpReceiverConfig(host=host)) as receiver,
        _sender(receiver) as sender,
    ):
        level, option = (socket.IPPROTO_IPV6, 25) if sender.ipv6 else (socket.IPPROTO_IP, 11)
        assert sender._sock.getsockopt(level, option) == 1
