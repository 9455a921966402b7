"""``embedq plan``'s simulation: the curve, the fleet simulated with the workers' own batching,
and the fleet size it picks."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from embedq.tools.capacity import Curve, Fleet, plan, simulate

E5 = Curve.of({1: 206.0, 8: 911.0})
"""The e5-large-shaped model on 2 threads (docs/performance.md): one question, eight."""


def test_the_curve_interpolates_and_extends_the_measured_points() -> None:
    curve = Curve.of({1: 10.0, 4: 40.0, 8: 60.0})
    assert curve.ms(1) == 10.0 and curve.ms(2) == 20.0 and curve.ms(6) == 50.0 and curve.ms(10) == 70.0
    assert curve.capacity(8) == pytest.approx(8 / 0.060)
    with pytest.raises(ValueError):
        Curve.of({0: 5.0})


def test_a_fleets_own_batches_scale_the_curve_and_keep_their_spread() -> None:
    idle = Curve.of({1: 20.0, 8: 90.0})
    logged = [(1, 30.0), (1, 20.0), (2, 45.0), (8, 135.0), (8, 180.0)]  # a shared host: slower, uneven
    fleet = idle.observed(logged)
    assert fleet.points == idle.points and sorted(fleet.spread) == [1.0, 1.5, 1.5, 1.5, 2.0]
    import random

    draws = sorted(fleet.draw(4, random.Random(i)) for i in range(200))
    assert draws[0] == pytest.approx(idle.ms(4)) and draws[-1] == pytest.approx(2 * idle.ms(4))
    busy = simulate(fleet, Fleet(workers=1), rate=30.0, requests=2000, seed=3)
    calm = simulate(idle, Fleet(workers=1), rate=30.0, requests=2000, seed=3)
    assert busy.p(95) > 1.3 * calm.p(95)  # slower, uneven batches: longer waits
    with pytest.raises(ValueError):
        idle.observed([])


def test_at_light_load_a_question_costs_one_encode_plus_the_queue() -> None:
    out = simulate(E5, Fleet(workers=1, overhead_ms=5.0), rate=0.2, requests=500)
    assert out.p(50) == pytest.approx(206.0 + 5.0, abs=1.0)  # alone, at once: no batching wait
    assert out.mean_batch == pytest.approx(1.0, abs=0.05)
    assert 0.02 < out.utilization < 0.08


def test_more_load_batches_more_and_waits_longer_and_more_workers_help() -> None:
    light = simulate(E5, Fleet(workers=1), rate=2.0)
    heavy = simulate(E5, Fleet(workers=1), rate=7.5)
    assert heavy.mean_batch > light.mean_batch and heavy.p(95) > light.p(95) > 0
    assert simulate(E5, Fleet(workers=2), rate=7.5).p(95) < heavy.p(95)


def test_plan_stops_at_the_first_fleet_that_meets_the_target() -> None:
    rows = plan(E5, rate=20.0, p95_ms=1000.0, fleet=Fleet())
    assert [r.meets for r in rows] == [False] * (len(rows) - 1) + [True]
    assert math.isinf(rows[0].p95_ms)  # 20/s is over one worker's ceiling (8.8/s)
    assert rows[-1].workers >= math.ceil(20.0 / E5.capacity(8))
    assert rows[-1].p95_ms <= 1000.0


PLAN = [sys.executable, "-m", "embedq.cli", "plan"]


def test_embedq_plan_prints_the_fleet_and_says_when_none_will_do() -> None:
    ok = subprocess.run(
        [*PLAN, "--rate", "20", "--p95-ms", "1000", "--curve", "1:206,8:911"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0 and "-> " in ok.stdout and "worker(s)" in ok.stdout, ok.stderr
    impossible = subprocess.run(
        [*PLAN, "--rate", "5", "--p95-ms", "100", "--curve", "1:206,8:911", "--max-workers", "4"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert impossible.returncode == 1 and "no fleet" in impossible.stdout
    bad = subprocess.run(
        [*PLAN, "--rate", "5", "--p95-ms", "100", "--curve", "fast"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "--curve" in bad.stderr


def test_embedq_plan_reads_a_running_fleets_batch_times(tmp_path: Path) -> None:
    from embedq.worker.report import BATCH_LOG, logged_batches

    curve = Curve.of({1: 206.0, 8: 911.0})
    # the worker's own DEBUG line, as it writes it: its fleet runs 1.6x slower than the idle curve
    lines = [
        "12:00:00 DEBUG embedq.worker " + BATCH_LOG % (i, "online", n, n, 3.0, 1.6 * curve.ms(n) - 2.0, 2.0)
        for i, n in enumerate([1, 2, 3, 8, 8, 5] * 10)
    ]
    lines.append(BATCH_LOG % (99, "bulk", 1, 8, 0.0, 9999.0, 1.0))  # not the questions' lane
    log = tmp_path / "worker.log"
    log.write_text("\n".join(lines) + "\n")
    assert len(logged_batches(log.read_text())) == 60
    args = [*PLAN, "--rate", "12", "--p95-ms", "2000", "--curve", "1:206,8:911"]
    idle = subprocess.run(args, capture_output=True, text=True, timeout=60)
    slow = subprocess.run([*args, "--batch-log", str(log)], capture_output=True, text=True, timeout=60)
    assert idle.returncode == 0 and slow.returncode == 0, (idle.stderr, slow.stderr)
    assert "60 logged batches: 1.60x the curve" in slow.stdout, slow.stdout

    def workers(out: str) -> int:
        return int(out.split("-> ")[1].split(" ")[0])

    assert workers(slow.stdout) > workers(idle.stdout)  # a slower host needs more of them
    empty = tmp_path / "quiet.log"
    empty.write_text("worker started\n")
    none = subprocess.run([*args, "--batch-log", str(empty)], capture_output=True, text=True, timeout=60)
    assert none.returncode == 2 and "EMBED_LOG_LEVEL=DEBUG" in none.stderr
