"""Thin adapters between the protocol core and the outside world: UDP sockets and pacing.

``io`` imports nothing from the protocol, policy or services: datagrams are opaque bytes here.
"""

from __future__ import annotations

from diode.io.pacing import (
    ETHERNET_FRAMING,
    IPV4_UDP_OVERHEAD,
    IPV6_UDP_OVERHEAD,
    Pacer,
    per_datagram_overhead,
    precise_sleep,
    wire_bytes,
)
from diode.io.udp import (
    DEFAULT_PAYLOAD_SIZE,
    MAX_GSO_BYTES,
    MAX_PAYLOAD_SIZE,
    ReceiverCounters,
    SenderCounters,
    UdpReceiver,
    UdpReceiverConfig,
    UdpSender,
    UdpSenderConfig,
)

__all__ = [
    "DEFAULT_PAYLOAD_SIZE",
    "ETHERNET_FRAMING",
    "IPV4_UDP_OVERHEAD",
    "IPV6_UDP_OVERHEAD",
    "MAX_GSO_BYTES",
    "MAX_PAYLOAD_SIZE",
    "Pacer",
    "ReceiverCounters",
    "SenderCounters",
    "UdpReceiver",
    "UdpReceiverConfig",
    "UdpSender",
    "UdpSenderConfig",
    "per_datagram_overhead",
    "precise_sleep",
    "wire_bytes",
]
