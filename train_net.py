#!/usr/bin/env python
"""
Train and evaluate Mutual Guidance detectors, as detectron2's tools/train_net.py does.

    python train_net.py --config-file configs/mg_vgg16_fpn_coco.yaml --num-gpus 8
    python train_net.py --config-file configs/mg_vgg16_fpn_coco.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint

Before anything is built: the config is validated, an OUTPUT_DIR holding another run is refused without
--resume (or --overwrite-output-dir), and --eval-only needs MODEL.WEIGHTS. Before the first iteration every
dataset used is checked (mutual_guide/data/check.py). The Trainer and the set-up live in mutual_guide.engine.
"""
import detectron2.utils.comm as comm
from detectron2.engine import launch
from detectron2.evaluation import verify_results

from mutual_guide.checkpoint import MutualGuideCheckpointer
from mutual_guide.data.loading import check_datasets
from mutual_guide.engine import Trainer, argument_parser, setup
from mutual_guide.utils.detectron2_compat import last_evaluation_results

__all__ = ["Trainer", "argument_parser", "invoke_main", "main", "setup"]


def main(args):
    cfg = setup(args)
    if args.eval_only:
        check_datasets(cfg, cfg.DATASETS.TEST)  # before the weights are loaded: bad data fails first
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
    return results if results is not None else last_evaluation_results(trainer)


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
