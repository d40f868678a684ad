"""The set-up of a run from the command line, shared by train_net.py, demo.py and the tools."""
import contextlib
import datetime
import logging
import os
import shutil

import detectron2.utils.comm as comm
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils.logger import setup_logger

from mutual_guide.config import add_mutual_guide_config
from mutual_guide.data import check_dataset_paths, register_custom_datasets
from mutual_guide.engine import preflight

__all__ = ["argument_parser", "setup"]

logger = logging.getLogger(__name__)
EVAL_CONFIG_NAME = "config_eval.yaml"


@contextlib.contextmanager
def _training_config_kept(output_dir, keep):
    """
    detectron2's default_setup writes the run's config to OUTPUT_DIR/config.yaml. For an evaluation (`keep`) in a
    folder that already has one (a training run's), that file is put back afterwards and the evaluation's config
    goes to config_eval.yaml beside it. A copy is made first, so a crash in between loses nothing.
    """
    path = os.path.join(output_dir, "config.yaml")
    if not keep or not comm.is_main_process() or not os.path.isfile(path):
        yield
        return
    backup = path + ".before-eval"
    shutil.copy2(path, backup)
    yield
    if os.path.isfile(path):
        os.replace(path, os.path.join(output_dir, EVAL_CONFIG_NAME))
    os.replace(backup, path)


EVALUATION_FOLDERS = ("eval", "inference", "draw")  # what an evaluation writes into OUTPUT_DIR


def _set_aside_earlier_evaluation(output_dir):
    """
    An evaluation replaces the reports of OUTPUT_DIR/eval, inference and draw; with --eval-only in a folder that
    holds an earlier run's, those are renamed `<folder>.replaced-<time>` first, so nothing of that run is lost.
    Returns the new names.
    """
    if not comm.is_main_process():
        return []
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    moved = []
    for name in EVALUATION_FOLDERS:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and os.listdir(path):
            os.replace(path, f"{path}.replaced-{stamp}")
            moved.append(f"{name}/ -> {name}.replaced-{stamp}/")
    return moved


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
    # before default_setup writes OUTPUT_DIR/config.yaml: an overwritten run's files are set aside, and an
    # evaluation in a training folder leaves that run's config.yaml as it was
    set_aside, suffix = preflight.set_aside_previous_run(cfg.OUTPUT_DIR, replaced)
    with _training_config_kept(cfg.OUTPUT_DIR, keep=args.eval_only):
        default_setup(cfg, args)
    earlier = _set_aside_earlier_evaluation(cfg.OUTPUT_DIR) if args.eval_only else []
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mutual_guide")
    if earlier:
        logger.warning(f"--eval-only in {cfg.OUTPUT_DIR!r}: the earlier evaluation's {', '.join(earlier)} kept, "
                       "renamed; this one writes its own")
    if set_aside:
        logger.warning(f"--overwrite-output-dir: a new run starts in {cfg.OUTPUT_DIR!r}, which held "
                       f"{', '.join(replaced)}; its {', '.join(set_aside)} now end in {suffix}")
    register_custom_datasets(cfg)
    preflight.check_dataset_names(cfg, training=not args.eval_only)
    # A missing dataset folder stops the run now, naming the path and the expected layout.
    check_dataset_paths(list(cfg.DATASETS.TEST) + ([] if args.eval_only else list(cfg.DATASETS.TRAIN)))
    return cfg
