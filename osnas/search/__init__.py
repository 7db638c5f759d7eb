"""`osnas search`: where does IN belong? A bilevel search over several source domains.

    bilevel.py    the search loop, step by step (run_search)
    architect.py  the alpha step: first order, second order, single-level
    batches.py    what feeds both steps: weight and alpha batches per source domain

The search relies on the models' mechanics: the space (osnas/models/space.py and the data
in search_spaces/*.yaml), the relaxations (models/relax.py) and the weight-sharing supernet
(models/supernet.py). `osnas derive` (osnas/derive/) turns a run into a genotype file.
"""

from osnas.search.bilevel import read_history, run_search

__all__ = ["run_search", "read_history"]
