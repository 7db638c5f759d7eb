"""`osnas search`: where does IN belong? A bilevel search over several source domains.

    supernets.py  the entry point (run_search): `search.runs` supernets into one run folder
    bilevel.py    one supernet's search loop, step by step
    architect.py  the alpha step: first order, second order, single-level
    batches.py    what feeds both steps: weight and alpha batches per source domain
    budget.py     the deployment cost of the alphas, and the budget

The search relies on the models' mechanics: the space (osnas/models/space.py and the data
in search_spaces/*.yaml), the relaxations (models/relax.py) and the weight-sharing supernet
(models/supernet.py). `osnas derive` (osnas/derive/) turns a run into a genotype file.
"""

from osnas.search.bilevel import read_history
from osnas.search.supernets import run_search

__all__ = ["run_search", "read_history"]
