"""Hyper-parameter search on the validation split (``python -m dd.tune``), with Optuna, an optional extra
(``pip install 'dd[tune]'``) that only this package imports, and only when a search runs.

    from dd.tune import TuneConfig, search
    rows = search("experiments/mtt/digits_ipc1.yaml", ["lr_img=log:10..1000", "syn_steps=10,20"],
                  TuneConfig(trials=8, iterations=100, out="runs/tune-mtt"))
"""

from dd.tune.search import Score, TuneConfig, search

__all__ = ["Score", "TuneConfig", "search"]
