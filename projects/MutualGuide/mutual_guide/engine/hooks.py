"""Training hooks beside detectron2's."""
import json
import logging
import math
import os

import detectron2.utils.comm as comm
from detectron2.engine.hooks import BestCheckpointer, HookBase

from mutual_guide.modeling.assignment_stats import SIZE_BINS, STATISTICS
from mutual_guide.utils.atomic_io import write_atomically
from mutual_guide.utils.detectron2_compat import best_checkpointer_metric
from mutual_guide.utils.events import wait_for_background_scalars

__all__ = ["AssignmentStatsSummary", "BestModelCheckpointer", "EarlyStopping", "StopTraining"]

logger = logging.getLogger(__name__)


class StopTraining(BaseException):
    """
    Raised by the trainer once every hook has run after the iteration at which one set `stop_training`. A
    BaseException, like KeyboardInterrupt: detectron2's training loop logs any Exception as a failure, and this
    one must only leave the loop, whose `finally` still runs the hooks' after_train.
    """


class BestModelCheckpointer(BestCheckpointer):
    """
    detectron2's BestCheckpointer (OUTPUT_DIR/<file_prefix>.pth holds the weights of the best evaluation so far),
    which, when the metric it tracks is not among the evaluation's results, also names the ones that are:
    detectron2's only says that it was not found, and a misspelt TEST.BEST_METRIC would go unnoticed.

    Its best value so far (`best_so_far`, a checkpointable) is kept in the checkpoints: detectron2's starts
    afresh on --resume, and would replace model_best.pth by the first evaluation after it, however worse.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.best_so_far = _Attributes(self, ("best_metric", "best_iter"))

    def _best_checking(self):
        latest = self.trainer.storage.latest()
        if best_checkpointer_metric(self) not in latest:
            # evaluation results are stored flattened as "<task>/<metric>"; training scalars have no "/"
            available = sorted(k for k in latest if "/" in k) or sorted(latest)
            logger.warning(
                "TEST.BEST_METRIC %r is not among the evaluation results, so no model_best.pth is kept. "
                "Metrics that exist: %s",
                best_checkpointer_metric(self),
                ", ".join(available),
            )
            return
        super()._best_checking()


class EarlyStopping(HookBase):
    """
    Stops training when `metric` (higher is better) has not improved on its best for `patience` evaluations in a
    row (TEST.EARLY_STOP_PATIENCE). Registered after detectron2's EvalHook, it reads the evaluation that hook has
    just stored, at the iterations where that hook evaluates during training; it must be registered in every
    process, like EvalHook: the results exist in the main process only, which decides, and every process stops
    at the same iteration.

    Stopping sets `stop_training`; the trainer ends its loop once every hook has run after that iteration (the
    periodic checkpoint and the best model of that iteration are saved), and the hooks' after_train run. Then
    this hook saves `model_final` (the periodic checkpointer saves it only at SOLVER.MAX_ITER). There is no
    further evaluation: the weights are those of the evaluation that stopped the run, already in metrics.json.

    `progress` (a checkpointable: best value, its iteration, evaluations without improvement since) is kept in
    the checkpoints, so that a resumed run counts on from where the interrupted one was.
    """

    def __init__(self, eval_period, checkpointer, metric, patience):
        self._period = eval_period
        self._checkpointer = checkpointer
        self.metric = metric
        self.patience = patience
        self.best = None
        self.best_iter = None
        self.evaluations_without_improvement = 0
        self.progress = _Attributes(self, ("best", "best_iter", "evaluations_without_improvement"))
        self.stop_training = False

    def after_step(self):
        # the iterations at which EvalHook evaluates during training (the one at max_iter is in its after_train)
        next_iter = self.trainer.iter + 1
        if next_iter % self._period or next_iter == self.trainer.max_iter:
            return
        stop = self._count_evaluation() if comm.is_main_process() else False
        # the main process's decision, in every process (all_gather is a plain list with a single process)
        self.stop_training = comm.all_gather(stop)[0]

    def _count_evaluation(self):
        """Counts the evaluation just stored (main process); True when patience has run out."""
        value, iteration = self.trainer.storage.latest().get(self.metric, (None, None))
        if iteration != self.trainer.iter:
            logger.warning("TEST.BEST_METRIC %r is not among the results of the evaluation after iteration %d: "
                           "early stopping does not count it", self.metric, self.trainer.iter + 1)
            return False
        if self.best is None or value > self.best:
            self.best, self.best_iter, self.evaluations_without_improvement = value, iteration, 0
            return False
        self.evaluations_without_improvement += 1
        if self.evaluations_without_improvement < self.patience:
            return False
        logger.info(
            "Early stopping after iteration %d of %d: %s has not improved for %d evaluations in a row "
            "(TEST.EARLY_STOP_PATIENCE %d); its best, %.4f, was at the evaluation after iteration %d.",
            self.trainer.iter + 1, self.trainer.max_iter, self.metric, self.evaluations_without_improvement,
            self.patience, self.best, self.best_iter + 1,
        )
        return True

    def after_train(self):
        if self.stop_training:
            self._checkpointer.save("model_final", iteration=self.trainer.iter)


class _Attributes:
    """The named attributes of `owner` as a checkpointable (state_dict / load_state_dict) of fvcore's Checkpointer."""

    def __init__(self, owner, names):
        self._owner, self._names = owner, names

    def state_dict(self):
        return {name: getattr(self._owner, name) for name in self._names}

    def load_state_dict(self, state):
        for name in self._names:
            setattr(self._owner, name, state[name])


class AssignmentStatsSummary(HookBase):
    """
    At the end of training, the mean over the run of each assignment statistic the detector put into the storage
    (MODEL.MUTUAL_GUIDE.ASSIGNMENT_STATS_PERIOD, modeling/assignment_stats.py): logged as a table and written to
    OUTPUT_DIR/assignment_stats.json. Steps where a size had no object (NaN) are left out of that size's means.
    """

    def __init__(self, output_dir):
        self.output_dir = output_dir

    def after_train(self):
        if not comm.is_main_process():
            return
        wait_for_background_scalars()  # the last step's values may still be on their way to the storage
        means = {}
        for size in SIZE_BINS:
            for name in STATISTICS:
                key = f"assignment/{size}/{name}"
                if key not in self.trainer.storage.histories():
                    continue
                values = [v for v, _ in self.trainer.storage.history(key).values() if math.isfinite(v)]
                means.setdefault(size, {})[name] = sum(values) / len(values) if values else None
        if not means:
            return
        rows = [f"| {size} | " + " | ".join("-" if means[size].get(n) is None else f"{means[size][n]:.3g}"
                                            for n in STATISTICS) + " |" for size in means]
        logger.info("Assignment over the run (means of the steps measured):\n| size | " + " | ".join(STATISTICS)
                    + " |\n" + "\n".join(rows))
        write_atomically(os.path.join(self.output_dir, "assignment_stats.json"),
                         json.dumps({"means_over_steps": means}, indent=1).encode())
