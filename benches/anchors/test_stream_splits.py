#!/usr/bin/env python3
"""Tests of the streamed row's splits (run_anchors.stream_plan, method_plan).

Run: `.venv-anchors/bin/python -m unittest benches/anchors/test_stream_splits.py`
(or `bash benches/anchors/run.sh --test`).
"""

from __future__ import annotations

import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run_anchors as ra  # noqa: E402
import stream_gap as sg  # noqa: E402

# BBBC021's layout: 10 weeks, 3-6 plates each (names as in the bundled table).
PLATES_PER_WEEK = [6, 6, 6, 6, 6, 6, 5, 5, 6, 3]
BBBC = [(f"Week{w + 1}", f"Week{w + 1}_{w + 1}{p:03d}") for w, n in enumerate(PLATES_PER_WEEK) for p in range(n)]
SEMI = [(f"B{b}", f"B{b}_P{p}") for b in range(1, 5) for p in (1, 2)]


def week(b: str) -> int:
    return int(b.removeprefix("Week"))


def old_early_order(pairs):
    """The harness's order before splits existed: the first 30% of the batches
    in natural order are the reference; the rest are files named
    f"{rank:03d}_{plate}.parquet", taken by the daemon in name order."""
    order = sorted({b for b, _ in pairs}, key=ra.natural_key)
    ref = set(order[: max(1, round(ra.STREAM_REFERENCE_SHARE * len(order)))])
    rank = {b: i for i, b in enumerate(order)}
    names = sorted((f"{rank[b]:03d}_{p}.parquet", (b, p)) for b, p in set(pairs) if b not in ref)
    return sorted(ref, key=ra.natural_key), [bp for _, bp in names]


class StreamPlan(unittest.TestCase):
    def check_partition(self, pairs, ref, arrivals, k):
        self.assertEqual(len(ref), k)
        self.assertEqual(len(set(ref)), k)
        rest = sorted(bp for bp in set(pairs) if bp[0] not in ref)
        self.assertEqual(sorted(arrivals), rest, "every non-reference plate arrives exactly once")

    def test_early_is_the_harness_row(self):
        for pairs in (BBBC, SEMI, list(reversed(BBBC)) + BBBC[:5]):
            ref, arrivals = ra.stream_plan(pairs, "early")
            self.assertEqual((ref, arrivals), old_early_order(pairs))
        ref, _ = ra.stream_plan(BBBC, "early")
        self.assertEqual(ref, ["Week1", "Week2", "Week3"])

    def test_late_warm_starts_on_the_last_weeks_and_streams_backwards(self):
        ref, arrivals = ra.stream_plan(BBBC, "late")
        self.assertEqual(ref, ["Week8", "Week9", "Week10"])
        self.check_partition(BBBC, ref, arrivals, 3)
        weeks = [week(b) for b, _ in arrivals]
        self.assertEqual(weeks, sorted(weeks, reverse=True))
        self.assertEqual(weeks[0], 7)
        self.assertEqual(weeks[-1], 1)
        self.assertEqual(ra.stream_plan(SEMI, "late")[0], ["B4"])

    def test_spread(self):
        ref, arrivals = ra.stream_plan(BBBC, "spread")
        self.assertEqual(ref, ["Week2", "Week6", "Week9"])
        self.check_partition(BBBC, ref, arrivals, 3)
        weeks = [week(b) for b, _ in arrivals]
        self.assertEqual(weeks, sorted(weeks))
        self.assertEqual(ra.stream_plan(SEMI, "spread")[0], ["B3"])

    def test_shuffled_is_seeded_and_interleaves_weeks(self):
        a = ra.stream_plan(BBBC, "shuffled", seed=0)
        self.assertEqual(a, ra.stream_plan(list(reversed(BBBC)), "shuffled", seed=0),
                         "same seed, same plan, whatever the row order of the table")
        self.check_partition(BBBC, a[0], a[1], 3)
        weeks = [week(b) for b, _ in a[1]]
        runs = 1 + sum(x != y for x, y in zip(weeks, weeks[1:]))
        self.assertGreater(runs, 7 + 5, "plates of a week do not arrive together")
        others = {tuple(map(tuple, ra.stream_plan(BBBC, "shuffled", seed=s)[1])) for s in range(1, 6)}
        self.assertGreater(len(others | {tuple(a[1])}), 1, "the seed changes the order")

    def test_every_split_partitions(self):
        for split in ra.STREAM_SPLITS:
            for pairs, k in ((BBBC, 3), (SEMI, 1)):
                ref, arrivals = ra.stream_plan(pairs, split, seed=3)
                self.check_partition(pairs, ref, arrivals, 0 if split == "cold" else k)

    def test_cold_streams_every_plate_in_batch_order(self):
        ref, arrivals = ra.stream_plan(BBBC, "cold")
        self.assertEqual(ref, [])
        weeks = [int(b.removeprefix("Week")) for b, _ in arrivals]
        self.assertEqual(weeks, sorted(weeks))
        self.assertEqual(len(arrivals), len(set(BBBC)))

    def test_errors(self):
        with self.assertRaises(ra.HarnessError):
            ra.stream_plan(BBBC, "nope")
        with self.assertRaises(ra.HarnessError):
            ra.stream_plan([("B1", "P1"), ("B1", "P2")], "early")


class MethodPlan(unittest.TestCase):
    def test_split_methods(self):
        plan = ra.method_plan(["none", "balans", "balans_stream", "balans_stream@late"])
        self.assertEqual([s for _, s, _ in plan], ["none", "balans", "balans_stream", "balans_stream@late"])
        self.assertEqual(plan[2][0], "balans, streamed (serve)")
        self.assertEqual(plan[3][0], "balans, streamed (serve, split late)")

    def test_unknown(self):
        for bad in ("balans_stream@nope", "harmony@late", "nothing"):
            with self.assertRaises(ra.HarnessError):
                ra.method_plan(["none", bad])


def ok(total, m):
    return {"status": "ok", "scores": {"total": total, "map_cross_batch": m, "batch": 0.5, "bio": 0.5}}


class Gap(unittest.TestCase):
    def test_within_is_streamed_at_least_offline_minus_tolerance(self):
        g = sg.gaps(ok(0.657, 0.581), ok(0.623, 0.570), 0.02)
        self.assertAlmostEqual(g["gap_total"], 0.034)
        self.assertAlmostEqual(g["gap_map"], 0.011)
        self.assertEqual((g["within_total"], g["within_map"]), (False, True))
        g = sg.gaps(ok(0.6, 0.5), ok(0.7, 0.49), 0.02)  # streamed better: within, negative gap
        self.assertEqual((g["within_total"], g["within_map"]), (True, True))
        self.assertLess(g["gap_total"], 0)

    def test_failed_or_missing_scores_are_not_judged(self):
        g = sg.gaps(ok(0.6, 0.5), {"status": "failed", "error": "x"}, 0.02)
        self.assertEqual(g, {"gap_total": None, "within_total": None, "gap_map": None, "within_map": None})
        g = sg.gaps(ok(0.6, None), ok(0.6, 0.4), 0.02)
        self.assertIsNone(g["within_map"])
        self.assertTrue(g["within_total"])

    def test_render_marks_misses_and_failures(self):
        def row(set_, split, o, s, target=True):
            return {"set": set_, "split": split, "reference_batches": ["B1"], "reference_rows": 10, "rows": 40,
                    "reference_labels": 3, "labels": 5, "offline": o, "streamed": s, "issue_target": target,
                    **sg.gaps(o, s, 0.02)}
        report = {
            "tolerance": 0.02, "seed": 0, "semisynth_seed": 7, "splits": ["early", "late"],
            "environment": {"balans": "b", "source": "s", "balans_overrides": {"BALANS_METHOD__K": "20"}},
            "finished": "now", "seconds": 1.0,
            "sets": [{"set": "bbbc021", "rows": [
                row("bbbc021", "early", ok(0.657, 0.581), ok(0.650, 0.575)),
                row("bbbc021", "late", ok(0.657, 0.581), ok(0.600, 0.575)),
                row("bbbc021", "late", ok(0.657, 0.581), {"status": "failed", "error": "serve exited 1"}, False),
            ]}],
        }
        md = sg.render(report)
        self.assertIn("| bbbc021 | early | B1 | 0.657 | 0.650 | +0.007 | 0.581 | 0.575 | +0.006 | yes | yes |", md)
        self.assertIn("| +0.057 |", md)
        self.assertIn("FAILED: serve exited 1", md)
        self.assertIn("both within 0.02 on 1 of 2 rows", md)
        self.assertIn("bbbc021 / late (total gap +0.057", md)
        self.assertIn("`BALANS_METHOD__K=20`", md)


if __name__ == "__main__":
    unittest.main()
