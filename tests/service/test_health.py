"""Health rules as a truth table over facts, and heartbeats on passed-in monotonic times."""

from __future__ import annotations

import pytest

from userseg.service.health import Condition, HealthFacts, Heartbeats, assess

STALE = "directory stale: last success 900 s ago (max 600 s)"


@pytest.mark.parametrize(
    ("facts", "condition", "live", "ready"),
    [
        (HealthFacts(started=False), Condition.STARTING, True, False),
        (HealthFacts(started=False, stuck_loops=("enforce",)), Condition.STARTING, False, False),
        (HealthFacts(started=False, degraded=(STALE,)), Condition.STARTING, True, False),
        (HealthFacts(started=True), Condition.OK, True, True),
        (HealthFacts(started=True, degraded=(STALE,)), Condition.DEGRADED, True, True),
        (HealthFacts(started=True, stuck_loops=("ingest",)), Condition.FAILING, False, False),
        (HealthFacts(started=True, reconcile_error="nft: EPERM"), Condition.FAILING, True, False),
        (
            HealthFacts(started=True, stuck_loops=("enforce",), reconcile_error="x", degraded=(STALE,)),
            Condition.FAILING,
            False,
            False,
        ),
    ],
)
def test_assess_truth_table(facts: HealthFacts, condition: Condition, live: bool, ready: bool) -> None:
    h = assess(facts)
    assert (h.condition, h.live, h.ready) == (condition, live, ready)
    # Whatever is not OK says why; OK says nothing.
    assert bool(h.reasons) == (condition is not Condition.OK)


def test_failing_reasons_name_the_loop_and_the_error_and_keep_the_degraded_ones() -> None:
    h = assess(
        HealthFacts(
            started=True, stuck_loops=("enforce", "ingest"), reconcile_error="nft: EPERM", degraded=(STALE,)
        )
    )
    assert h.reasons == (
        "loop not progressing: enforce",
        "loop not progressing: ingest",
        "kernel not in step: last reconcile failed: nft: EPERM",
        STALE,
    )


def test_starting_says_so_after_any_stuck_loop() -> None:
    h = assess(HealthFacts(started=False, stuck_loops=("enforce",)))
    assert h.reasons == ("loop not progressing: enforce", "start-up not finished")


def test_degraded_reasons_are_passed_through_in_order() -> None:
    h = assess(HealthFacts(started=True, degraded=("b", "a")))
    assert h.reasons == ("b", "a")


def test_doc_is_what_the_endpoints_serve() -> None:
    doc = assess(HealthFacts(started=True, degraded=(STALE,))).doc()
    assert doc == {"status": "degraded", "live": True, "ready": True, "reasons": [STALE]}


def test_heartbeats_name_loops_silent_past_their_deadline() -> None:
    beats = Heartbeats()
    beats.register("enforce", 10.0, now=100.0)
    beats.register("ingest", 30.0, now=100.0)
    assert beats.stuck(110.0) == ()  # exactly at the deadline is not late
    assert beats.stuck(110.5) == ("enforce",)
    beats.beat("enforce", 110.5)
    assert beats.stuck(120.0) == ()
    assert beats.stuck(131.0) == ("enforce", "ingest")  # sorted
    assert beats.ages(131.0) == {"enforce": 20.5, "ingest": 31.0}


def test_heartbeats_ignore_unknown_loops_and_forget_unregistered_ones() -> None:
    beats = Heartbeats()
    beats.beat("ghost", 0.0)  # never registered: no deadline to miss
    assert beats.stuck(1e9) == () and beats.ages(5.0) == {}
    beats.register("ingest", 30.0, now=0.0)
    assert beats.stuck(31.0) == ("ingest",)
    beats.unregister("ingest")
    beats.unregister("ingest")  # twice is harmless
    assert beats.stuck(1e9) == () and beats.ages(1e9) == {}


def test_registering_again_restarts_the_clock() -> None:
    beats = Heartbeats()
    beats.register("enforce", 10.0, now=0.0)
    beats.register("enforce", 10.0, now=50.0)  # e.g. after a reload
    assert beats.stuck(55.0) == ()
