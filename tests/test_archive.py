import numpy as np
import pytest

from jcw.search.archive import hypervolume


def test_hypervolume_of_a_hand_computed_front():
    # Reference point (10 ms, 80%): the box is 0..10 ms by 80..100% top-1, 10 x 20 = 200 units, normalised to 1.
    #   front (2 ms, 90%), (5 ms, 95%), (8 ms, 97%), swept from the left, each adds the strip it alone dominates:
    #     (2, 90): 2..10 ms x 80..90% = 8 x 10 = 80
    #     (5, 95): 5..10 ms x 90..95% = 5 x 5  = 25
    #     (8, 97): 8..10 ms x 95..97% = 2 x 2  =  4
    #   (6 ms, 92%) is dominated by (5, 95): adds nothing.
    #   (12 ms, 99%) lies past the latency reference and (1 ms, 70%) below the floor: outside the box, they add nothing.
    #   hypervolume = (80 + 25 + 4) / 200 = 0.545
    latency = np.array([2.0, 5.0, 8.0, 6.0, 12.0, 1.0])
    top1 = np.array([90.0, 95.0, 97.0, 92.0, 99.0, 70.0])
    assert hypervolume(latency, top1, ref_latency=10.0, floor_top1=80.0) == pytest.approx(0.545, abs=1e-12)


def test_hypervolume_bounds():
    # A perfect subnet (0 ms, 100%) dominates the whole box; a front wholly outside it dominates none of it.
    assert hypervolume(np.array([0.0]), np.array([100.0]), 10.0, 80.0) == pytest.approx(1.0)
    assert hypervolume(np.array([12.0, 1.0]), np.array([99.0, 70.0]), 10.0, 80.0) == 0.0


def test_front_with_ties_keeps_both_of_two_equal_members_and_drops_the_beaten():
    from jcw.search.archive import on_front_with_ties, pareto_mask

    # (2, 90) twice: equal, both kept; (5, 95) kept; (5, 93) beaten on top-1 at the same latency; (6, 95) beaten on
    # latency at the same top-1; (8, 97) kept
    latency = np.array([2.0, 2.0, 5.0, 5.0, 6.0, 8.0])
    top1 = np.array([90.0, 90.0, 95.0, 93.0, 95.0, 97.0])
    assert on_front_with_ties(latency, top1).tolist() == [True, True, True, False, False, True]
    assert pareto_mask(latency, top1).tolist() == [True, False, True, False, False, True]  # the first seen only
