"""Training hooks beside detectron2's."""
from detectron2.engine.hooks import BestCheckpointer

from mutual_guide.utils.detectron2_compat import best_checkpointer_metric

__all__ = ["BestModelCheckpointer"]


class BestModelCheckpointer(BestCheckpointer):
    """
    detectron2's BestCheckpointer (OUTPUT_DIR/<file_prefix>.pth holds the weights of the best evaluation so far),
    which, when the metric it tracks is not among the evaluation's results, also names the ones that are:
    detectron2's only says that it was not found, and a misspelt TEST.BEST_METRIC would go unnoticed.
    """

    def _best_checking(self):
        latest = self.trainer.storage.latest()
        if best_checkpointer_metric(self) not in latest:
            # evaluation results are stored flattened as "<task>/<metric>"; training scalars have no "/"
            available = sorted(k for k in latest if "/" in k) or sorted(latest)
            self._logger.warning(
                "TEST.BEST_METRIC %r is not among the evaluation results, so no model_best.pth is kept. "
                "Metrics that exist: %s",
                best_checkpointer_metric(self),
                ", ".join(available),
            )
            return
        super()._best_checking()
