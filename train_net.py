#!/usr/bin/env python
"""
Train and evaluate Mutual Guidance detectors, as detectron2's tools/train_net.py does.

    python train_net.py --config-file configs/mg_vgg16_fpn_coco.yaml --num-gpus 8
    python train_net.py --config-file configs/mg_vgg16_fpn_coco.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint
"""
import logging
import weakref

import torch

import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    default_argument_parser,
    default_setup,
    launch,
)
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from mutual_guide import add_mutual_guide_config
from mutual_guide.checkpoint import MutualGuideCheckpointer
from mutual_guide.data import MutualGuideDatasetMapper, check_dataset_paths, register_custom_datasets
from mutual_guide.engine import (
    build_dataset_evaluator,
    check_amp_supported,
    check_num_classes,
    convert_sync_batchnorm,
    create_ddp_model_any_device,
    load_imagenet_backbone,
)
from mutual_guide.solver import build_lr_scheduler


class Trainer(DefaultTrainer):
    """DefaultTrainer with the project's data mapper, evaluators, strict checkpointer and CPU-capable DDP."""

    def __init__(self, cfg):
        # Same steps as DefaultTrainer.__init__, with two changes: DDP also wraps CPU models (detectron2 passes
        # device_ids that CPU modules reject) and MODEL.WEIGHTS must fit the network exactly.
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        check_amp_supported(cfg)

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model_any_device(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = MutualGuideCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

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
        if self.cfg.MODEL.BACKBONE.PRETRAINED:
            model = self.model.module if hasattr(self.model, "module") else self.model
            load_imagenet_backbone(model.backbone, self.cfg)
        self.start_iter = 0

    @classmethod
    def build_train_loader(cls, cfg):
        # detectron2's loader passes extra keywords on to torch's DataLoader; pinning needs a CUDA device.
        pin_memory = cfg.DATALOADER.PIN_MEMORY and cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available()
        loader = build_detection_train_loader(
            cfg, mapper=MutualGuideDatasetMapper(cfg, is_train=True), pin_memory=pin_memory
        )
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
        return loader

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        """The seed's warm-up and cosine ("WarmupCosineFloorLR", mutual_guide/solver.py) or detectron2's."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        loader = build_detection_test_loader(cfg, dataset_name, mapper=MutualGuideDatasetMapper(cfg, is_train=False))
        check_num_classes(cfg, [dataset_name])
        return loader

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """VOC evaluator (AP .50:.95, AP50, AP75) or COCO evaluator, by the dataset's `evaluator_type`."""
        return build_dataset_evaluator(cfg, dataset_name, output_folder)


def setup(args):
    """Config from file and command line, logging, output folder, and the datasets it declares."""
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mutual_guide")
    register_custom_datasets(cfg)
    # A missing dataset folder stops the run now, naming the path and the expected layout.
    check_dataset_paths(list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN)))
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        MutualGuideCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        if cfg.MODEL.MUTUAL_GUIDE.FUSE_BN_AT_INFERENCE:
            model.fuse_for_inference()
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
    args = default_argument_parser().parse_args()
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
