"""Whole runs through the seeded lossy link, and the ``diode simulate`` command."""

from __future__ import annotations

import json
from collections.abc import Callable

import click
import msgspec
import pytest
from click.testing import CliRunner

from diode.cli import main
from diode.cli.simulate import simulate
from diode.protocol import simulation
from diode.protocol.events import Event, GapDetected, RecordsDelivered
from diode.protocol.link import LinkConfig, LossyLink
from diode.protocol.receiver import ReceiverSession
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
    # a seed whose losses stay inside every block's budget (with seed 3 the link drops 3 of
    # the 6 datagrams of the short tail block, which has 2 repair symbols)
    result = run_simulation(
        SimulationParams(
            records=6000,
            seed=4,
            restart_after=3000,
            link=LinkConfig(loss=0.04, seed=4),
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


@pytest.mark.parametrize(("loss", "burst"), [(0.05, 1.0), (0.05, 8.0), (0.2, 3.0)])
def test_gilbert_elliott_loss_has_the_asked_rate_and_mean_burst(loss: float, burst: float) -> None:
    link = LossyLink(LinkConfig(loss=loss, burst=burst, seed=3))
    n = 200_000
    tagged = [i.to_bytes(4, "big") for i in range(n)]
    arrived = {int.from_bytes(d, "big") for d in link.transmit(tagged)}
    runs = []
    length = 0
    for i in range(n):
        if i in arrived:
            if length:
                runs.append(length)
            length = 0
        else:
            length += 1
    assert link.dropped == n - len(arrived) == sum(runs) + length
    assert abs(link.dropped / n - loss) < 0.1 * loss
    # independent loss: runs are geometric with mean 1 / (1 - loss)
    expected = burst if burst > 1 else 1 / (1 - loss)
    assert abs(sum(runs) / len(runs) - expected) < 0.1 * expected


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


def test_cli_json_reflects_every_impairment_option() -> None:
    options = {
        "--records": "3000",
        "--record-size": "300",
        "--topics": "2",
        "--partitions": "3",
        "--loss": "0.02",
        "--burst": "3",
        "--duplicate": "0.05",
        "--reorder": "0.05",
        "--corrupt": "0.02",
        "--repair": "0.5",
        "--seed": "11",
    }
    args = ["simulate", *[word for option in options.items() for word in option], "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["k"], data["m"], data["seed"]) == (32, 16, 11)
    assert data["records_sent"] == data["records_delivered"] == 3000
    assert data["records_lost"] == data["blocks_lost"] == 0 and data["gaps"] == []
    link = data["link"]
    assert link["sent"] == data["datagrams_sent"]
    assert link["dropped"] == data["datagrams_dropped"] > 0
    assert link["duplicated"] > 0 and link["reordered"] > 0 and link["corrupted"] > 0
    assert data["rejected"]["authentication"] > 0
    assert data["datagrams_rejected"] == sum(data["rejected"].values())
    assert data["blocks_sent"] == data["blocks_complete"] + data["blocks_recovered"]
    assert data["record_bytes_sent"] > 3000 * 300
    assert data["ok"] is True and data["problems"] == []


def test_cli_json_gaps_add_up_to_the_records_lost() -> None:
    result = CliRunner().invoke(
        main, ["simulate", "--records", "3000", "--partitions", "2", "--loss", "0.25", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["records_lost"] > 0 and data["blocks_lost"] > 0
    assert sum(g["count"] for g in data["gaps"]) == data["records_lost"]
    for gap in data["gaps"]:
        assert gap["topic"] == "plant.sensor-0" and gap["partition"] in (0, 1)
        assert 0 <= gap["first_offset"] <= gap["last_offset"]
        assert gap["count"] <= gap["last_offset"] - gap["first_offset"] + 1


def test_cli_restart_after() -> None:
    result = CliRunner().invoke(
        main, ["simulate", "--records", "2000", "--restart-after", "1000", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["sessions"] == 2 and data["records_delivered"] == 2000


def test_every_simulate_option_has_help() -> None:
    options = [p for p in simulate.params if isinstance(p, click.Option)]
    assert [o.name for o in options if not o.help] == []
    names = {opt for o in options for opt in o.opts}
    required = "records record-size topics partitions loss burst duplicate reorder corrupt"
    assert {f"--{n}" for n in (required + " repair seed json").split()} <= names


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--records", "-1"], ["'--records'", "-1", "x>=0"]),
        (["--record-size", "-5"], ["'--record-size'", "-5", "x>=0"]),
        (["--topics", "0"], ["'--topics'", "0", "x>=1"]),
        (["--partitions", "0"], ["'--partitions'", "0", "x>=1"]),
        (["--loss", "1.5"], ["'--loss'", "1.5", "[0, 1)"]),
        (["--duplicate", "-0.1"], ["'--duplicate'", "-0.1", "[0, 1)"]),
        (["--reorder", "1"], ["'--reorder'", "1.0", "[0, 1)"]),
        (["--corrupt", "2"], ["'--corrupt'", "2.0", "[0, 1)"]),
        (["--burst", "0.5"], ["'--burst'", "0.5", "x>=1.0"]),
        (["--repair", "1.5"], ["'--repair'", "1.5", "0.0<=x<=1.0"]),
        (["--k", "0"], ["'--k'", "0", "x>=1"]),
        (["--k", "300"], ["k=300", "m=75", "limit of 256"]),
        (["--mtu", "100"], ["'--mtu'", "100", "536<=x<=65535"]),
        (["--interleave", "0"], ["'--interleave'", "0", "x>=1"]),
        (["--rate", "0"], ["'--rate'", "0.0", "x>0.0"]),
        (["--restart-after", "0"], ["'--restart-after'", "0", "x>=1"]),
        (["--records", "10", "--restart-after", "20"], ["'--restart-after'", "20", "10"]),
    ],
)
def test_bad_options_name_the_value_and_the_limit(args: list[str], words: list[str]) -> None:
    result = CliRunner().invoke(main, ["simulate", *args])
    assert result.exit_code != 0
    for word in words:
        assert word in result.output, result.output


# --- the checks of a run can fail: a receiver that misbehaves is caught --------------------


Change = Callable[[Event], list[Event]]


def _tampered(monkeypatch: pytest.MonkeyPatch, make_change: Callable[[], Change]) -> None:
    """Run the simulations of this test with receivers whose events go through a change
    (a fresh one per receiver)."""

    class Tampered(ReceiverSession):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            self.queue: list[Event] = []
            self.change = make_change()

        def next_event(self) -> Event | None:
            while not self.queue:
                event = super().next_event()
                if event is None:
                    return None
                self.queue += self.change(event)
            return self.queue.pop(0)

    monkeypatch.setattr(simulation, "ReceiverSession", Tampered)


def _once(change: Callable[[RecordsDelivered], list[Event]]) -> Callable[[], Change]:
    """A change applied to the first delivery of two records or more, and to nothing else."""

    def make() -> Change:
        done: list[bool] = []

        def apply(event: Event) -> list[Event]:
            if done or not isinstance(event, RecordsDelivered) or len(event.records) < 2:
                return [event]
            done.append(True)
            return change(event)

        return apply

    return make


def _no_gaps() -> Change:
    return lambda e: [] if isinstance(e, GapDetected) else [e]


def _first(event: RecordsDelivered, **changes: object) -> RecordsDelivered:
    first = msgspec.structs.replace(event.records[0], **changes)
    return RecordsDelivered(event.session_id, event.block, (first, *event.records[1:]))


@pytest.mark.parametrize(
    ("change", "loss", "words"),
    [
        (
            _once(lambda e: [_first(e, value=bytes(e.records[0].value or b"") + b"?")]),
            0.0,
            "content",
        ),
        (_once(lambda e: [_first(e, headers=(("x", b"y"),))]), 0.0, "content"),
        (_once(lambda e: [_first(e, timestamp=0)]), 0.0, "content"),
        (_once(lambda e: [_first(e, offset=10**9)]), 0.0, "never sent"),
        (
            _once(lambda e: [RecordsDelivered(e.session_id, e.block, e.records[::-1])]),
            0.0,
            "delivered after offset",
        ),
        (_once(lambda e: [e, e]), 0.0, "delivered twice"),
        (
            # a record from inside a block (a missing first record would be an unseen gap)
            _once(
                lambda e: [RecordsDelivered(e.session_id, e.block, e.records[:1] + e.records[2:])]
            ),
            0.0,
            "neither delivered nor inside a reported gap",
        ),
        (_no_gaps, 0.25, "!= sent"),
    ],
    ids=["value", "headers", "timestamp", "offset", "order", "twice", "dropped", "no-gaps"],
)
def test_a_receiver_that_misbehaves_fails_the_run(
    monkeypatch: pytest.MonkeyPatch, change: Callable[[], Change], loss: float, words: str
) -> None:
    _tampered(monkeypatch, change)
    params = SimulationParams(records=1500, partitions=1, seed=3, link=LinkConfig(loss=loss))
    result = run_simulation(params)
    assert not result.ok
    assert any(words in problem for problem in result.problems), result.problems
    # and the command says so, with its exit code, in both output formats
    for fmt in (["--json"], []):
        cli = CliRunner().invoke(
            main, ["simulate", "--records", "1500", "--loss", str(loss), "--seed", "3", *fmt]
        )
        assert cli.exit_code == 1 and "checks failed" in cli.output
        if fmt:
            data = json.loads(cli.output.splitlines()[0])
            assert data["ok"] is False and data["problems"]
