"""Whole runs through the seeded lossy link, and the ``diode simulate`` command."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from diode.cli import main
from diode.protocol.link import LinkConfig, LossyLink
from diode.protocol.simulation import SimulationParams, run_simulation
from diode.protocol.wire import ProtocolConfig


@pytest.mark.parametrize(
    "link",
    [
        LinkConfig(),
        LinkConfig(loss=0.03, seed=1),
        LinkConfig(loss=0.05, burst=4, seed=2),
        LinkConfig(duplicate=0.1, seed=3),
        LinkConfig(reorder=0.2, seed=4),
        LinkConfig(corrupt=0.05, seed=5),
        LinkConfig(loss=0.03, duplicate=0.05, reorder=0.05, corrupt=0.02, seed=6),
    ],
    ids=["clean", "iid", "burst", "dup", "reorder", "corrupt", "all"],
)
def test_inside_the_budget_nothing_is_lost(link: LinkConfig) -> None:
    result = run_simulation(
        SimulationParams(records=4000, topics=2, partitions=3, seed=link.seed, link=link)
    )
    assert result.ok, result.problems
    assert result.records_delivered == result.records_sent == 4000
    assert result.records_lost == 0 and not result.gaps
    if link.corrupt:
        assert result.rejected["authentication"] > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_interleaving_spreads_a_burst(seed: int) -> None:
    # fast enough that 8 blocks close within one linger: the group is not cut short
    link = LinkConfig(loss=0.03, burst=10, seed=seed)
    runs = [
        run_simulation(
            SimulationParams(
                records=20000, seed=1, rate=1e6, link=link, protocol=ProtocolConfig(interleave=d)
            )
        )
        for d in (1, 8)
    ]
    flat, deep = runs
    assert flat.ok and deep.ok
    assert flat.blocks_lost > 0
    assert deep.records_lost == 0


@pytest.mark.parametrize("seed", [1, 2])
def test_beyond_the_budget_losses_are_exactly_accounted(seed: int) -> None:
    result = run_simulation(
        SimulationParams(
            records=3000, topics=2, partitions=2, seed=seed, link=LinkConfig(loss=0.2, seed=seed)
        )
    )
    assert result.ok, result.problems
    assert result.records_lost > 0
    assert result.records_delivered + result.records_lost == result.records_sent


def test_restart_and_key_rotation_with_loss() -> None:
    result = run_simulation(
        SimulationParams(
            records=6000,
            seed=3,
            restart_after=3000,
            link=LinkConfig(loss=0.04, seed=3),
            protocol=ProtocolConfig(key_rotation_bytes=300_000),
        )
    )
    assert result.ok, result.problems
    assert result.sessions == 2
    assert result.records_lost == 0


def test_slow_stream_closes_blocks_by_linger() -> None:
    result = run_simulation(
        SimulationParams(records=300, rate=300.0, seed=4, link=LinkConfig(loss=0.05, seed=4))
    )
    assert result.ok, result.problems
    assert result.blocks_sent >= 90  # a few records per block


def test_link_is_deterministic_and_hits_its_rates() -> None:
    datagrams = [bytes([i % 256]) * 20 for i in range(20_000)]
    a = LossyLink(LinkConfig(loss=0.1, burst=5, seed=9))
    b = LossyLink(LinkConfig(loss=0.1, burst=5, seed=9))
    assert a.transmit(datagrams) == b.transmit(datagrams)
    assert 0.07 < a.dropped / a.sent < 0.13
    c = LossyLink(LinkConfig(duplicate=0.1, reorder=0.1, seed=1))
    out = c.transmit(datagrams) + c.drain()
    assert len(out) == len(datagrams) + c.duplicated
    assert out != datagrams and sorted(set(out)) == sorted(set(datagrams))


def test_cli_json() -> None:
    result = CliRunner().invoke(
        main, ["simulate", "--records", "2000", "--loss", "0.3", "--seed", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in (
        "records_sent",
        "records_delivered",
        "records_lost",
        "datagrams_sent",
        "datagrams_dropped",
        "datagrams_rejected",
        "blocks_sent",
        "blocks_recovered",
        "blocks_lost",
        "gaps",
    ):
        assert key in data
    assert data["records_delivered"] + data["records_lost"] == data["records_sent"] == 2000
    assert data["gaps"] and {"topic", "partition", "first_offset", "last_offset"} <= set(
        data["gaps"][0]
    )


def test_cli_table_and_bad_options() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["simulate", "--records", "500", "--loss", "0.02"])
    assert result.exit_code == 0, result.output
    assert "records delivered" in result.output and "all checks passed" in result.output
    result = runner.invoke(main, ["simulate", "--loss", "1.5"])
    assert result.exit_code != 0 and "probability" in result.output
