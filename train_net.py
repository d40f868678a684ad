#!/usr/bin/env python
"""
Train and evaluate Mutual Guidance detectors, as detectron2's tools/train_net.py does.

    python train_net.py --config-file configs/mg_vgg16_fpn_coco.yaml --num-gpus 8
    python train_net.py --config-file configs/mg_vgg16_fpn_coco.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint

Before anything is built: the config is validated, an OUTPUT_DIR holding another run is refused without
--resume (or --overwrite-output-dir), and --eval-only needs MODEL.WEIGHTS. Before the first iteration every
dataset used is checked (mutual_guide/data/check.py).
"""
import os
import weakref

import torch

import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, hooks, launch
from detectron2.evaluation import verify_results
from detectron2.utils.events import CommonMetricPrinter, TensorboardXWriter
from detectron2.utils.logger import setup_logger

from mutual_guide import add_mutual_guide_config, preflight
from mutual_guide.atomic_io import AtomicJSONWriter, remove_stale_temporaries
from mutual_guide.checkpoint import MutualGuideCheckpointer
from mutual_guide.data import build_dataset_mapper, check_dataset_paths, register_custom_datasets
from mutual_guide.data.loading import check_datasets, test_dataset_dicts, training_dataset_dicts
from mutual_guide.engine import (
    BestModelCheckpointer,
    build_dataset_evaluator,
    check_amp_supported,
    check_num_classes,
    convert_sync_batchnorm,
    cpu_ddp_without_device_ids,
    load_imagenet_backbone,
)
from mutual_guide.solver import build_lr_scheduler


class Trainer(DefaultTrainer):
    """DefaultTrainer with the project's data mapper (detectron2's for its own detectors), evaluators, strict checkpointer and CPU-capable DDP."""

    def __init__(self, cfg):
        check_amp_supported(cfg)
        # Every dataset of the run is checked before anything is built, so that a bad image or annotation
        # stops the run now rather than at the iteration that samples it or at the final evaluation.
        check_datasets(cfg, list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
        if comm.is_main_process():
            remove_stale_temporaries(cfg.OUTPUT_DIR)
        with cpu_ddp_without_device_ids(cfg):
            super().__init__(cfg)

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
            model = self.model.module if hasattr(self.model, "module") else self.model
            load_imagenet_backbone(model.backbone, self.cfg)
        self.start_iter = 0

    def build_hooks(self):
        """detectron2's hooks, and with TEST.EVAL_PERIOD > 0, OUTPUT_DIR/model_best.pth after each evaluation."""
        # DefaultTrainer.__init__ makes a DetectionCheckpointer right before it calls this, and the checkpointing
        # hooks keep the one they are given: ours (weights must fit the network, or FINETUNE) replaces it first.
        self.checkpointer = MutualGuideCheckpointer(
            self.model, self.cfg.OUTPUT_DIR, finetune=self.cfg.MODEL.MUTUAL_GUIDE.FINETUNE, trainer=weakref.proxy(self)
        )
        ret = super().build_hooks()
        if self.cfg.TEST.EVAL_PERIOD > 0 and len(self.cfg.DATASETS.TEST) and comm.is_main_process():
            # right after the evaluation that stores the metric
            after_eval = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)) + 1
            best = BestModelCheckpointer(self.cfg.TEST.EVAL_PERIOD, self.checkpointer, self.cfg.TEST.BEST_METRIC)
            ret.insert(after_eval, best)
        return ret

    def build_writers(self):
        """detectron2's default writers, with metrics.json written atomically (atomic_io.AtomicJSONWriter)."""
        return [
            CommonMetricPrinter(self.max_iter),
            AtomicJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]

    @classmethod
    def build_train_loader(cls, cfg):
        """The checked records of DATASETS.TRAIN, in DATASETS.BOX_CONVENTION (mutual_guide/data/loading.py)."""
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
        """The seed's warm-up and cosine ("WarmupCosineFloorLR", mutual_guide/solver.py) or detectron2's."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        dataset = test_dataset_dicts(cfg, dataset_name)
        loader = build_detection_test_loader(
            dataset,
            mapper=build_dataset_mapper(cfg, is_train=False),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            batch_size=cfg.TEST.IMS_PER_BATCH,
        )
        check_num_classes(cfg, [dataset_name])
        return loader

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """VOC evaluator (AP .50:.95, AP50, AP75) or COCO evaluator, by the dataset's `evaluator_type`."""
        return build_dataset_evaluator(cfg, dataset_name, output_folder)


def argument_parser():
    """detectron2's default_argument_parser, plus --overwrite-output-dir."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite-output-dir",
        action="store_true",
        help="start a new training run in an OUTPUT_DIR that holds another run (refused otherwise)",
    )
    return parser


def setup(args):
    """
    Config from file and command line, checked; the output folder (refused for a new run when it holds
    another one); logging; and the datasets the config declares. `args` may come from detectron2's own
    default_argument_parser (no --overwrite-output-dir: then False).
    """
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    preflight.check_config(cfg, training=not args.eval_only)
    if args.eval_only:
        preflight.check_weights_for_inference(cfg, resume=args.resume)
    replaced = preflight.check_output_dir(
        cfg.OUTPUT_DIR, resume=args.resume, eval_only=args.eval_only,
        overwrite=getattr(args, "overwrite_output_dir", False),
    )
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mutual_guide")
    preflight.set_aside_previous_run(cfg.OUTPUT_DIR, replaced)
    register_custom_datasets(cfg)
    preflight.check_dataset_names(cfg, training=not args.eval_only)
    # A missing dataset folder stops the run now, naming the path and the expected layout.
    check_dataset_paths(list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN)))
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        check_datasets(cfg, cfg.DATASETS.TEST)  # before the weights are loaded: bad data fails first
        model = Trainer.build_model(cfg)
        MutualGuideCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        if cfg.MODEL.MUTUAL_GUIDE.FUSE_BN_AT_INFERENCE and hasattr(model, "fuse_for_inference"):
            model.fuse_for_inference()  # MutualGuideDetector's; detectron2's RetinaNet has frozen BatchNorm
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    # detectron2 returns results only with TEST.EXPECTED_RESULTS; return the last evaluation in any case.
    return results if results is not None else getattr(trainer, "_last_eval_results", None)


def invoke_main() -> None:
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
