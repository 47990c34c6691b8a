"""The policy engine: what may cross the diode, decided on the OT side before it leaves.

Pure code: no Kafka, no sockets, no clocks (``now`` is passed in). The pieces:

* ``model``     the pydantic model of a policy file (YAML under ``policies/``)
* ``loader``    YAML -> validated ``Policy`` or ``FILE:LINE: message`` problems; fingerprint
* ``patterns``  regex cost bounds, topic globs, rule-overlap detection
* ``engine``    ``PolicyEngine.evaluate(record, now) -> Decision``
* ``anomaly``   per-topic detectors (rate, size, field drift, timestamp skew, silence)
* ``ratelimit`` token buckets
* ``reload``    ``ReloadingPolicy``: hot reload that keeps the old policy if the new is bad
* ``edit``      in-place YAML edits for ``diode policy allow/deny``, comments kept
* ``samples``   records made up from a policy that it forwards (``diode bench policy``)
"""

from __future__ import annotations

from diode.policy.decision import Action, Decision, Finding
from diode.policy.engine import DEFAULT_DENY, PolicyEngine
from diode.policy.loader import Policy, load_policy, load_policy_text
from diode.policy.reload import (
    PolicyEvent,
    PolicyLoaded,
    PolicyRejected,
    PolicyReloaded,
    PolicyUnchanged,
    ReloadingPolicy,
)

__all__ = [
    "DEFAULT_DENY",
    "Action",
    "Decision",
    "Finding",
    "Policy",
    "PolicyEngine",
    "PolicyEvent",
    "PolicyLoaded",
    "PolicyRejected",
    "PolicyReloaded",
    "PolicyUnchanged",
    "ReloadingPolicy",
    "load_policy",
    "load_policy_text",
]
