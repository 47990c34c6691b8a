"""Loss accounting across sender sessions (``LossLedger``): a resend fills gaps, losing
records already accounted for is no new loss, and nothing is ever under-reported."""

from __future__ import annotations

import pytest

from diode.protocol.accounting import MAX_OPEN_GAPS, LossLedger, OpenGap
from diode.protocol.link import LinkConfig
from diode.protocol.simulation import SimulationParams, run_simulation

OLD, NEW = b"old-sess", b"new-sess"
T = "plant.t"


def _deliver(ledger: LossLedger, session: bytes, offsets: range) -> list[object]:
    return [ledger.delivered(session, T, 0, o) for o in offsets]


def test_one_session_every_gap_is_new_and_nothing_is_recovered() -> None:
    ledger = LossLedger()
    _deliver(ledger, OLD, range(0, 10))
    assert ledger.gap(OLD, T, 0, 10, 19, 10).lost == 10
    _deliver(ledger, OLD, range(20, 30))
    # a block found lost late (from a heartbeat) after later blocks were delivered
    assert ledger.gap(OLD, T, 0, 30, 35, 6).lost == 6
    assert _deliver(ledger, OLD, range(36, 40)) == [True] * 4
    assert ledger.net_lost == 16 and ledger.records_recovered == 0


def test_a_resend_fills_the_old_sessions_restart_gap() -> None:
    ledger = LossLedger()
    _deliver(ledger, OLD, range(0, 100))
    assert ledger.gap(OLD, T, 0, 100, 149, 50).lost == 50  # tail cut off by the restart
    # the new session resends from the committed offset 80: 80..99 are duplicates
    got = _deliver(ledger, NEW, range(80, 160))
    assert got[:20] == [False] * 20
    recovered = got[20:70]
    assert all(isinstance(g, OpenGap) for g in recovered)
    assert got[70:] == [True] * 10
    assert ledger.records_recovered == 50 and ledger.net_lost == 0


def test_losing_resent_records_already_delivered_is_no_new_loss() -> None:
    ledger = LossLedger()
    _deliver(ledger, OLD, range(0, 100))
    verdict = ledger.gap(NEW, T, 0, 60, 89, 30)
    assert (verdict.lost, verdict.bound) == (0, False)
    assert ledger.net_lost == 0


def test_a_gap_straddling_what_was_delivered_counts_only_the_rest() -> None:
    ledger = LossLedger()
    _deliver(ledger, OLD, range(0, 100))
    # contiguous: exact
    assert ledger.gap(NEW, T, 0, 90, 109, 20).lost == 10
    assert ledger.net_lost == 10
    # not contiguous, partly above what is accounted: a bound, the smaller of its count and
    # its offsets above what is accounted
    other = LossLedger()
    _deliver(other, OLD, range(0, 100))
    verdict = other.gap(NEW, T, 0, 80, 139, 50)
    assert verdict.bound and verdict.lost == 40
    verdict = other.gap(b"third", T, 0, 140, 200, 10)
    assert (verdict.lost, verdict.bound) == (10, False)


def test_a_resend_losing_the_same_block_again_counts_it_once() -> None:
    ledger = LossLedger()
    _deliver(ledger, OLD, range(0, 10))
    # offsets with holes (records the policy refused): the same offsets hold the same records
    assert ledger.gap(OLD, T, 0, 10, 40, 20).lost == 20
    verdict = ledger.gap(NEW, T, 0, 10, 40, 20)
    assert (verdict.lost, verdict.bound) == (0, False)
    assert ledger.net_lost == 20


def test_seeded_offsets_are_accounted_for() -> None:
    ledger = LossLedger()
    ledger.seed({(T, 0): 499})
    assert ledger.high(T, 0) == 499
    assert ledger.delivered(NEW, T, 0, 450) is False
    assert ledger.gap(NEW, T, 0, 300, 399, 100).lost == 0
    assert ledger.delivered(NEW, T, 0, 500) is True


def test_open_gaps_are_bounded_and_forgetting_only_over_reports() -> None:
    ledger = LossLedger()
    for i in range(MAX_OPEN_GAPS + 5):
        ledger.gap(OLD, T, 0, 2 * i, 2 * i, 1)
    assert ledger.forgotten == 5
    # offset 0's gap was forgotten: its resend is new, not a recovery; the loss stays counted
    assert ledger.delivered(NEW, T, 0, 0) is True
    assert ledger.net_lost == MAX_OPEN_GAPS + 5


@pytest.mark.parametrize("seed", [0, 3, 5, 8])
def test_across_a_restart_the_gaps_account_exactly_for_the_loss(seed: int) -> None:
    """The simulation checks that the ledger's total equals the records never delivered."""
    result = run_simulation(
        SimulationParams(
            records=5000,
            seed=seed,
            restart_after=2500,
            link=LinkConfig(loss=0.2, corrupt=0.01, seed=seed),
        )
    )
    assert result.ok, result.problems
    assert result.sessions == 2 and result.records_lost > 0
    # the resend made the naive sum of the sessions' gaps wrong: the ledger was needed
    assert sum(g.count for g in result.gaps) != result.records_lost
