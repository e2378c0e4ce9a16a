"""JCW's multi-target survival for NSGA-II.

Plain NSGA-II spreads the population over the whole front; JCW wants good subnets near every deployment budget.
Several latency targets are placed evenly between the smallest subnet and the budget; for each target the population
is ranked by non-dominated sorting on (error, |latency - target|), and the next population is filled round-robin
over the targets, each target taking its best not-yet-chosen candidate (by front, then crowding distance).
Objectives are F = (latency, error).
"""
from __future__ import annotations

import numpy as np
from pymoo.core.survival import Survival
from pymoo.operators.survival.rank_and_crowding.metrics import get_crowding_function
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting


class MultiTargetSurvival(Survival):
    def __init__(self, targets: list[float]):
        super().__init__(filter_infeasible=True)
        self.targets = list(targets)
        self.nds = NonDominatedSorting()
        self.crowding = get_crowding_function("cd")

    def _do(self, problem, pop, *args, random_state=None, n_survive=None, **kwargs):
        F = pop.get("F").astype(float, copy=False)
        n_survive = min(n_survive or len(pop), len(pop))
        orders, best_rank, best_crowd = [], np.full(len(pop), np.inf), np.zeros(len(pop))
        for target in self.targets:
            G = np.stack([F[:, 1], np.abs(F[:, 0] - target)], axis=1)
            rank = np.empty(len(pop))
            crowd = np.empty(len(pop))
            for k, front in enumerate(self.nds.do(G)):
                rank[front] = k
                crowd[front] = self.crowding.do(G[front], n_remove=0)
            # best first: lower front, then larger crowding distance, then index (deterministic)
            orders.append(np.lexsort((np.arange(len(pop)), -crowd, rank)))
            better = rank < best_rank
            best_rank[better], best_crowd[better] = rank[better], crowd[better]
        chosen: list[int] = []
        taken = np.zeros(len(pop), dtype=bool)
        cursors = [0] * len(orders)
        while len(chosen) < n_survive:
            for t, order in enumerate(orders):
                while cursors[t] < len(order) and taken[order[cursors[t]]]:
                    cursors[t] += 1
                if cursors[t] < len(order) and len(chosen) < n_survive:
                    i = int(order[cursors[t]])
                    taken[i] = True
                    chosen.append(i)
        for i in chosen:  # what NSGA-II's binary tournament compares
            pop[i].set("rank", int(best_rank[i]))
            pop[i].set("crowding", float(best_crowd[i]))
        return pop[chosen]


def latency_targets(smallest_ms: float, budget_ms: float, n: int = 4) -> list[float]:
    """`n` targets evenly spaced from the smallest subnet's latency to the budget (both included)."""
    if n == 1:
        return [budget_ms]
    return [float(v) for v in np.linspace(smallest_ms, budget_ms, n)]
