"""The evaluation stage as a library: ``evaluate(EvalConfig(...))`` retrains networks on synthetic sets and
baselines and returns their records; ``evaluate_transfer(TransferConfig(...))`` does the same for a KRR-ST
transfer set. ``python -m dd.eval`` is the command around them."""

from dd.eval.config import EvalConfig
from dd.eval.results import Evaluation
from dd.eval.run import evaluate
from dd.eval.transfer import TransferConfig, evaluate_transfer

__all__ = ["EvalConfig", "Evaluation", "TransferConfig", "evaluate", "evaluate_transfer"]
