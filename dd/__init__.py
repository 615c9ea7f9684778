"""dd: dataset distillation.

Three stages, each a library call with a ``python -m`` command around it: ``dd.buffer`` trains experts and stores
their trajectories, ``dd.distill`` learns a small synthetic set (by the method registered under ``--method``),
``dd.eval`` retrains fresh networks on a set and reports their accuracy beside the baselines.
"""

from dd.distill.synset import SynSet, load_synset, save_synset

__all__ = ["SynSet", "load_synset", "save_synset"]
__version__ = "0.1.0"
