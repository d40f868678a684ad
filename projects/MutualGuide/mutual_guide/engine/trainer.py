"""The project's trainer: detectron2's DefaultTrainer with the project's data, evaluation and checkpoints."""
import logging
import os
import weakref

import torch

import detectron2.utils.comm as comm
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, hooks
from detectron2.evaluation import verify_results
from detectron2.utils.events import CommonMetricPrinter, TensorboardXWriter

from mutual_guide.checkpoint.checkpointer import EMA_KEY, MutualGuideCheckpointer
from mutual_guide.data import build_dataset_mapper, build_test_transform
from mutual_guide.data.loading import check_datasets, test_dataset_dicts, training_dataset_dicts
from mutual_guide.engine.devices import convert_sync_batchnorm
from mutual_guide.engine.ema import EMAHook, build_model_ema
from mutual_guide.engine.hooks import AssignmentStatsSummary, BestModelCheckpointer, EarlyStopping, StopTraining
from mutual_guide.engine.precision import MixedPrecisionTrainer, precision_from_config
from mutual_guide.engine.preflight import check_num_classes
from mutual_guide.engine.slicing import SlicedDetector
from mutual_guide.evaluation import build_dataset_evaluator
from mutual_guide.modeling.backbone import load_pretrained_backbone
from mutual_guide.modeling.postprocessing import removed_candidates_recorded
from mutual_guide.solver import build_lr_scheduler
from mutual_guide.utils.atomic_io import AtomicJSONWriter, remove_stale_temporaries
from mutual_guide.utils.detectron2_compat import (
    ddp_without_device_ids,
    last_evaluation_results,
    registered_hooks,
    store_evaluation_results,
)

__all__ = ["Trainer", "load_imagenet_backbone"]

logger = logging.getLogger(__name__)


def load_imagenet_backbone(backbone, cfg):
    """The paper's initialisation: ImageNet weights into the backbone, as MODEL.BACKBONE.PRETRAINED says."""
    spec = cfg.MODEL.BACKBONE.PRETRAINED
    load_pretrained_backbone(backbone, cfg.MODEL.BACKBONE.NAME, spec)
    logger.info("Backbone %s initialised from %s", cfg.MODEL.BACKBONE.NAME, spec)


class Trainer(DefaultTrainer):
    """DefaultTrainer with the project's data mapper (detectron2's for its own detectors), evaluators, strict checkpointer and CPU-capable DDP."""

    def __init__(self, cfg):
        # MODEL.PRECISION (and SOLVER.AMP.ENABLED): the device's check before anything is built, the network's once
        # it is (engine/precision.py); a fallback is logged
        precision = precision_from_config(cfg)
        # Every dataset of the run is checked before anything is built, so that a bad image or annotation
        # stops the run now rather than at the iteration that samples it or at the final evaluation.
        check_datasets(cfg, list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
        if comm.is_main_process():
            remove_stale_temporaries(cfg.OUTPUT_DIR)
        if torch.device(cfg.MODEL.DEVICE).type == "cpu" and comm.get_world_size() > 1:
            with ddp_without_device_ids():  # DDP refuses device_ids for a module on the CPU (gloo)
                super().__init__(cfg)
        else:
            super().__init__(cfg)
        if precision.mixed:  # the reduced dtype must also be faster on this network's training step
            precision = precision_from_config(cfg, self._trainer.model, training=True)
        if comm.get_world_size() > 1:  # every process computes in the dtype the first one measured
            precision = comm.all_gather(precision)[0]
        self.precision = precision
        self._use_precision(precision)

    def _use_precision(self, precision):
        """
        DefaultTrainer picks SimpleTrainer, or detectron2's CUDA-only AMPTrainer for SOLVER.AMP.ENABLED; the step
        is replaced by MixedPrecisionTrainer (autocast on any device) when the run computes in a reduced dtype,
        by SimpleTrainer when SOLVER.AMP.ENABLED fell back to float32. Same model, loader and optimizer.
        """
        step = self._trainer
        if precision.mixed:
            new = MixedPrecisionTrainer(step.model, step.data_loader, step.optimizer, precision)
        elif isinstance(step, AMPTrainer):
            new = SimpleTrainer(step.model, step.data_loader, step.optimizer)
        else:
            return
        step.concurrent_executor.shutdown(wait=False)
        self._trainer = new
        logger.info("Training in %s (MODEL.PRECISION %r)%s", precision.name, precision.requested,
                    ", float16 gradients scaled (GradScaler)" if precision.grad_scaling else "")

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        return convert_sync_batchnorm(model, cfg)

    def resume_or_load(self, resume=True):
        """
        Resume from OUTPUT_DIR's last checkpoint, else load MODEL.WEIGHTS, else start from the ImageNet
        backbone named by MODEL.BACKBONE.PRETRAINED (the paper's initialisation) or from scratch.
        """
        if (resume and self.checkpointer.has_checkpoint()) or self.cfg.MODEL.WEIGHTS:
            return super().resume_or_load(resume=resume)
        if self.cfg.MODEL.MUTUAL_GUIDE.FINETUNE:
            raise ValueError("MODEL.MUTUAL_GUIDE.FINETUNE True needs MODEL.WEIGHTS: the detector to fine-tune from")
        if self.cfg.MODEL.BACKBONE.PRETRAINED:
            load_imagenet_backbone(self._unwrapped_model.backbone, self.cfg)
        self.start_iter = 0

    @property
    def _unwrapped_model(self):
        return self.model.module if isinstance(self.model, torch.nn.parallel.DistributedDataParallel) else self.model

    def build_hooks(self):
        """
        detectron2's hooks, and with TEST.EVAL_PERIOD > 0, OUTPUT_DIR/model_best.pth after each evaluation, and
        with TEST.EARLY_STOP_PATIENCE > 0, early stopping (hooks.EarlyStopping); with
        MODEL.MUTUAL_GUIDE.ASSIGNMENT_STATS_PERIOD > 0, the run's assignment summary (hooks.AssignmentStatsSummary);
        with MODEL_EMA.ENABLED, the average of the weights (`_use_ema`).
        """
        # DefaultTrainer.__init__ makes a DetectionCheckpointer right before it calls this, and the checkpointing
        # hooks keep the one they are given: ours (weights must fit the network, or FINETUNE) replaces it first.
        self.checkpointer = MutualGuideCheckpointer(
            self.model, self.cfg.OUTPUT_DIR, finetune=self.cfg.MODEL.MUTUAL_GUIDE.FINETUNE, restores_training=True,
            trainer=weakref.proxy(self)
        )
        # built here, before resume_or_load: the checkpointer restores it on --resume (EMAHook starts it otherwise)
        self.ema = build_model_ema(self.cfg, self._unwrapped_model)
        ret = super().build_hooks()
        if self.ema is not None:
            self._use_ema(ret)
        if self.cfg.MODEL.MUTUAL_GUIDE.ASSIGNMENT_STATS_PERIOD > 0:
            ret.append(AssignmentStatsSummary(self.cfg.OUTPUT_DIR))
        if not (self.cfg.TEST.EVAL_PERIOD > 0 and len(self.cfg.DATASETS.TEST)):
            return ret
        # right after the evaluation that stores the metric
        after_eval = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)) + 1
        if comm.is_main_process():
            best = BestModelCheckpointer(self.cfg.TEST.EVAL_PERIOD, self.checkpointer, self.cfg.TEST.BEST_METRIC)
            self.checkpointer.add_checkpointable("best_model", best.best_so_far)
            ret.insert(after_eval, best)
            after_eval += 1
        if self.cfg.TEST.EARLY_STOP_PATIENCE > 0:
            stopping = EarlyStopping(self.cfg.TEST.EVAL_PERIOD, self.checkpointer, self.cfg.TEST.BEST_METRIC,
                                     self.cfg.TEST.EARLY_STOP_PATIENCE)
            self.checkpointer.add_checkpointable("early_stopping", stopping.progress)
            ret.insert(after_eval, stopping)
            after_eval += 1
        if comm.is_main_process():
            # detectron2 saves the periodic checkpoint before it evaluates: one saved at an evaluation's iteration
            # would hold the best value and count of the evaluation before, and a run resumed from it would keep a
            # worse model_best.pth, or stop one evaluation late. Saved after them, it holds everything decided at
            # its iteration. (model_final.pth is saved in after_step too: the final evaluation, in after_train,
            # still comes after it.)
            periodic = next(h for h in ret if isinstance(h, hooks.PeriodicCheckpointer))
            ret.insert(after_eval, periodic)
            ret.remove(periodic)  # the first of the two: its place before EvalHook
        return ret

    def _use_ema(self, hook_list):
        """
        MODEL_EMA.ENABLED: the average is updated right after the LR scheduler's step (before any hook that
        evaluates or saves), saved in every checkpoint ("model" is the average, checkpoint/checkpointer.py), and
        evaluated in place of the training weights (TEST.EVAL_PERIOD and the evaluation after training).
        """
        self.checkpointer.add_checkpointable(EMA_KEY, self.ema)
        after_lr = next(i for i, h in enumerate(hook_list) if isinstance(h, hooks.LRScheduler)) + 1
        hook_list.insert(after_lr, EMAHook(self.ema, self._unwrapped_model))
        evaluation = next(i for i, h in enumerate(hook_list) if isinstance(h, hooks.EvalHook))

        def test_averaged_weights():
            results = self.test(self.cfg, self.ema.model)
            store_evaluation_results(self, results)
            return results

        hook_list[evaluation] = hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, test_averaged_weights)

    def after_step(self):
        """The hooks after an iteration; then, if one of them asks (`stop_training`), the end of training."""
        super().after_step()
        if any(getattr(h, "stop_training", False) for h in registered_hooks(self)):
            raise StopTraining

    def train(self):
        """
        DefaultTrainer.train, which also ends when a hook stops the training (hooks.EarlyStopping): its hooks'
        after_train have run then, and results are verified and returned as at the end of the schedule.
        """
        try:
            return super().train()
        except StopTraining:
            if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
                verify_results(self.cfg, last_evaluation_results(self))
                return last_evaluation_results(self)
            return None

    def build_writers(self):
        """detectron2's default writers, with metrics.json written atomically (utils/atomic_io.AtomicJSONWriter)."""
        return [
            CommonMetricPrinter(self.max_iter),
            AtomicJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]

    @classmethod
    def build_train_loader(cls, cfg):
        """The checked records of DATASETS.TRAIN, in DATASETS.BOX_CONVENTION (data/loading.py)."""
        # detectron2's loader passes extra keywords on to torch's DataLoader; pinning needs a CUDA device.
        pin_memory = cfg.DATALOADER.PIN_MEMORY and cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available()
        loader = build_detection_train_loader(
            cfg,
            dataset=training_dataset_dicts(cfg),
            mapper=build_dataset_mapper(cfg, is_train=True),
            pin_memory=pin_memory,
        )
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
        return loader

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """The paper's warm-up and cosine ("WarmupCosineFloorLR", solver.py) or detectron2's."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """
        detectron2's evaluation, the network under MODEL.PRECISION's autocast (postprocessing in float32), the
        model giving the candidates its NMS removed for the per-image records (evaluation/records.py); with
        TEST.SLICE.ENABLED, of the model on tiles (engine/slicing.py), without them.
        """
        precision = precision_from_config(cfg, model, training=False)  # measured on this network once per process
        if cfg.TEST.SLICE.ENABLED:  # the merge of the tiles keeps no removed candidates: not asked for
            with precision.autocast():
                return super().test(cfg, SlicedDetector.from_config(cfg, model, build_test_transform(cfg)), evaluators)
        with removed_candidates_recorded(model), precision.autocast():
            return super().test(cfg, model, evaluators)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """
        The checked records of `dataset_name` through the test-time mapper; with TEST.SLICE.ENABLED, read at full
        resolution (detectron2's DatasetMapper without augmentations): the tiles are resized by
        SlicedDetector, which `test` then wraps the model in.
        """
        dataset = test_dataset_dicts(cfg, dataset_name)
        if cfg.TEST.SLICE.ENABLED:
            mapper = DatasetMapper(is_train=False, augmentations=[], image_format=cfg.INPUT.FORMAT)
        else:
            mapper = build_dataset_mapper(cfg, is_train=False)
        loader = build_detection_test_loader(
            dataset,
            mapper=mapper,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            batch_size=cfg.TEST.IMS_PER_BATCH,
        )
        check_num_classes(cfg, [dataset_name])
        return loader

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """VOC evaluator (AP .50:.95, AP50, AP75) or COCO evaluator, by the dataset's `evaluator_type`."""
        return build_dataset_evaluator(cfg, dataset_name, output_folder)
