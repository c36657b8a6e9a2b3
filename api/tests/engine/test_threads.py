"""The thread governor: the team shrinks while the inference thread waits for a core, and probes back."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from pibloom.engine.threads import ThreadGovernor, own_waits, waiting_on_own_work


class Team:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, threads: int) -> None:
        self.calls.append(threads)


def work(governor: ThreadGovernor, seconds: float, share: float, step: float = 0.0625) -> None:
    """`seconds` of engine iterations in which the inference thread ran `share` of the wall time (steps
    of 1/16 s add up exactly in binary)."""
    for _ in range(round(seconds / step)):
        governor.record(step, step * share)


def test_a_thread_that_gets_its_core_keeps_the_whole_team() -> None:
    team = Team()
    governor = ThreadGovernor(4, team)
    work(governor, 60, 0.95)
    assert governor.threads == 4 and team.calls == []


def test_a_busy_neighbour_shrinks_the_team_one_thread_per_window_down_to_one() -> None:
    team = Team()
    governor = ThreadGovernor(4, team, window_s=0.5)
    work(governor, 0.5, 0.5)
    assert team.calls == [3]
    work(governor, 1.0, 0.5)
    assert team.calls == [3, 2, 1]
    work(governor, 1.0, 0.5)  # one thread cannot go lower
    assert governor.threads == 1 and team.calls == [3, 2, 1]


def test_probes_put_a_thread_back_and_wait_longer_each_time_one_fails() -> None:
    team = Team()
    governor = ThreadGovernor(2, team, window_s=0.5, probe_s=5.0, max_probe_s=20.0)
    work(governor, 0.5, 0.5)
    assert team.calls == [1]
    # Alone on its core, one thread gets all of it; the neighbour is still there for a second thread.
    probes: list[float] = []
    elapsed = 0.0
    for _ in range(200):
        before = len(team.calls)
        share = 0.5 if governor.threads == 2 else 1.0
        work(governor, 0.5, share)
        elapsed += 0.5
        if len(team.calls) > before and team.calls[-1] == 2:
            probes.append(elapsed)
    assert team.calls[:3] == [1, 2, 1]
    gaps = [later - earlier for earlier, later in itertools.pairwise(probes)]
    # Each failed probe doubles the wait (5, 10, 20 s of work, then capped at 20) plus its own window.
    assert gaps[:4] == pytest.approx([10.5, 20.5, 20.5, 20.5])


def test_a_probe_that_holds_keeps_the_thread_and_the_team_grows_back() -> None:
    team = Team()
    governor = ThreadGovernor(3, team, window_s=0.5, probe_s=2.0)
    work(governor, 1.0, 0.4)
    assert governor.threads == 1
    work(governor, 10, 0.95)  # the neighbour left: each probe holds
    assert team.calls == [2, 1, 2, 3] and governor.threads == 3


def test_the_team_must_have_a_thread() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ThreadGovernor(0, Team())


def test_a_neighbour_the_process_knows_has_left_brings_the_next_probe_forward() -> None:
    """The server's own side work (a grammar vocabulary built) shrinks the team like any neighbour; once
    it has ended, the next window probes instead of waiting `probe_s`, and the probe holds."""
    team = Team()
    governor = ThreadGovernor(2, team, window_s=0.5, probe_s=5.0)
    work(governor, 0.5, 0.5)
    work(governor, 1.0, 1.0)  # alone on one core now; without word, the probe waits 5 s of work
    assert team.calls == [1]
    governor.neighbour_left()
    work(governor, 0.5, 1.0)
    assert team.calls == [1, 2]
    work(governor, 10, 0.95)
    assert team.calls == [1, 2] and governor.threads == 2


def test_waits_on_own_work_are_reported_once_and_to_the_waiting_thread_only() -> None:
    own_waits()  # whatever this thread waited on before
    with waiting_on_own_work():
        time.sleep(0.05)  # blocked, not computing: the CPU time stays behind the wall time
    elsewhere: list[float] = []

    def other() -> None:
        with waiting_on_own_work():
            time.sleep(0.05)
        elsewhere.append(own_waits())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert own_waits() >= 0.04
    assert own_waits() == 0.0
    assert elsewhere[0] >= 0.04
