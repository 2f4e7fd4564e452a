"""Baselines the accuracy loop's greedy walk is measured against (bench/bench_tuning.py, tests/test_tuning.py): the
same search without its early stops, and with every subset of the most sensitive nodes kept in float instead of
the greedy prefixes. They subclass the search and are passed to `tune(..., search_class=...)`; the core search has
no knob for them."""

from __future__ import annotations

import itertools

from autoptq.decide.tuning import Search
from autoptq.techniques.recipe import Recipe


class ExhaustiveSearch(Search):
    """Every candidate of the same walk: nothing is skipped once a candidate meets the budget."""

    def stops_early(self) -> bool:
        return False


def every_subset_search(count: int) -> type[Search]:
    """The exhaustive walk whose exclusions are every non-empty subset of the `count` most sensitive nodes."""

    class EverySubsetSearch(ExhaustiveSearch):
        def exclude(self, base: Recipe) -> None:
            ranked = [s.node for s in self.sensitivity[:count]]
            for size in range(1, len(ranked) + 1):
                for chosen in itertools.combinations(ranked, size):
                    if self.out_of_budget():
                        return
                    recipe = base.model_copy(update={"nodes_to_exclude": [*base.nodes_to_exclude, *chosen]})
                    self.run(f"exclude {{{', '.join(chosen)}}}", self.plan.technique, recipe)

    return EverySubsetSearch
