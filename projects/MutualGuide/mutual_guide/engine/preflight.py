"""
Checks made by train_net.setup() (and demo.py) before anything is built or written, each failing with a
message naming the key, value or file at fault: config values, dataset names, the weights an evaluation needs,
and the output folder of a new training run.
"""
import datetime
import glob
import logging
import math
import os

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import BACKBONE_REGISTRY

from mutual_guide.data.box_convention import check_box_convention
from mutual_guide.engine.devices import check_device
from mutual_guide.engine.precision import check_precision
from mutual_guide.modeling.neck import NECK_REGISTRY

__all__ = [
    "check_config",
    "check_dataset_names",
    "check_num_classes",
    "check_output_dir",
    "check_weights_for_inference",
    "previous_run_files",
    "set_aside_previous_run",
]

logger = logging.getLogger(__name__)


def _ours(registry):
    """Names this project registered in `registry` (detectron2's own backbones do not fit this detector)."""
    return sorted(name for name, obj in registry if getattr(obj, "__module__", "").startswith("mutual_guide"))


def check_config(cfg, training=True):
    """Raise ValueError listing every config value that cannot work, each with its key and value."""
    bad = []

    def positive_int(key, value):
        if not isinstance(value, int) or value <= 0:
            bad.append(f"{key} must be a positive integer, got {value!r}")
            return False
        return True

    try:
        check_device(cfg.MODEL.DEVICE)
    except ValueError as e:
        # detectron2's default is "cuda": a machine without CUDA needs the key set, not a failure mid-build
        hint = "; set `MODEL.DEVICE cpu` to run on the CPU" if str(cfg.MODEL.DEVICE).startswith("cuda") else ""
        bad.append(f"MODEL.DEVICE: {e}{hint}")
    try:
        check_precision(cfg.MODEL.PRECISION)
    except ValueError as e:
        bad.append(str(e))
    size = cfg.INPUT.SIZE
    if not isinstance(size, int) or size <= 0 or size % 64:
        bad.append(f"INPUT.SIZE must be a positive multiple of 64 (320, 512...), got {size!r}")
    if training:
        positive_int("SOLVER.MAX_ITER", cfg.SOLVER.MAX_ITER)
        positive_int("SOLVER.CHECKPOINT_PERIOD", cfg.SOLVER.CHECKPOINT_PERIOD)
        bad.extend(_solver_problems(cfg.SOLVER))
        decay = cfg.MODEL_EMA.DECAY
        if cfg.MODEL_EMA.ENABLED and (not _number(decay) or not 0 <= decay < 1):
            bad.append(f"MODEL_EMA.DECAY must be in [0, 1), got {decay!r}")
    positive_int("MODEL.MUTUAL_GUIDE.NUM_CLASSES", cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES)
    positive_int("TEST.DETECTIONS_PER_IMAGE", cfg.TEST.DETECTIONS_PER_IMAGE)
    for key, value, low_open in (("MODEL.MUTUAL_GUIDE.SCORE_THRESH_TEST", cfg.MODEL.MUTUAL_GUIDE.SCORE_THRESH_TEST, False),
                                 ("MODEL.MUTUAL_GUIDE.NMS_THRESH_TEST", cfg.MODEL.MUTUAL_GUIDE.NMS_THRESH_TEST, True)):
        if not _number(value) or not (0 < value <= 1 if low_open else 0 <= value <= 1):
            bad.append(f"{key} must be in {'(0' if low_open else '[0'}, 1], got {value!r}")
    batch, world = cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size()
    if positive_int("SOLVER.IMS_PER_BATCH", batch) and batch % world:
        bad.append(f"SOLVER.IMS_PER_BATCH ({batch}, the total over all processes) must be a multiple of the "
                   f"number of processes ({world})")
    if not isinstance(cfg.TEST.EVAL_PERIOD, int) or cfg.TEST.EVAL_PERIOD < 0:
        bad.append(f"TEST.EVAL_PERIOD must be 0 (no evaluation during training) or positive, got {cfg.TEST.EVAL_PERIOD!r}")
    patience = cfg.TEST.EARLY_STOP_PATIENCE
    if not isinstance(patience, int) or patience < 0:
        bad.append(f"TEST.EARLY_STOP_PATIENCE must be 0 (no early stopping) or positive, got {patience!r}")
    elif training and patience > 0 and not (cfg.TEST.EVAL_PERIOD > 0 and len(cfg.DATASETS.TEST)):
        bad.append(f"TEST.EARLY_STOP_PATIENCE {patience} counts evaluations during training: it needs "
                   "TEST.EVAL_PERIOD > 0 and DATASETS.TEST")
    tile, overlap = cfg.TEST.SLICE.TILE_SIZE, cfg.TEST.SLICE.OVERLAP
    if not isinstance(tile, int) or tile < 0:
        bad.append(f"TEST.SLICE.TILE_SIZE must be 0 (INPUT.SIZE) or a positive number of pixels, got {tile!r}")
    if not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
        bad.append(f"TEST.SLICE.OVERLAP must be a fraction of the tile side in [0, 1), got {overlap!r}")
    try:
        check_box_convention(cfg.DATASETS.BOX_CONVENTION)
    except ValueError as e:
        bad.append(str(e))
    if cfg.MODEL.BACKBONE.NAME not in BACKBONE_REGISTRY:
        bad.append(f"MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME!r} is not a registered backbone; "
                   f"this project's: {', '.join(_ours(BACKBONE_REGISTRY))}")
    if cfg.MODEL.NECK.NAME not in NECK_REGISTRY:
        bad.append(f"MODEL.NECK.NAME {cfg.MODEL.NECK.NAME!r} is not a registered neck; "
                   f"valid: {', '.join(sorted(name for name, _ in NECK_REGISTRY))}")
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        bad.append(f"MODEL.WEIGHTS {weights!r}: file not found")
    if bad:
        raise ValueError("Invalid config:\n  " + "\n  ".join(bad))


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _solver_problems(solver):
    """What in SOLVER cannot train: each with its key and value (detectron2 would fail later, or train on NaN)."""
    bad = []
    if not _number(solver.BASE_LR) or solver.BASE_LR <= 0:
        bad.append(f"SOLVER.BASE_LR must be a positive number, got {solver.BASE_LR!r}")
    if not _number(solver.MOMENTUM) or not 0 <= solver.MOMENTUM < 1:
        bad.append(f"SOLVER.MOMENTUM must be in [0, 1), got {solver.MOMENTUM!r}")
    for key in ("WEIGHT_DECAY", "WEIGHT_DECAY_NORM", "BASE_LR_END"):
        value = solver.get(key)
        if value is not None and (not _number(value) or value < 0):
            bad.append(f"SOLVER.{key} must be 0 or positive, got {value!r}")
    if solver.get("WEIGHT_DECAY_BIAS") is not None and (not _number(solver.WEIGHT_DECAY_BIAS) or solver.WEIGHT_DECAY_BIAS < 0):
        bad.append(f"SOLVER.WEIGHT_DECAY_BIAS must be 0, positive or null (as WEIGHT_DECAY), got {solver.WEIGHT_DECAY_BIAS!r}")
    if _number(solver.BASE_LR) and _number(solver.get("BASE_LR_END", 0.0)) and solver.get("BASE_LR_END", 0.0) > solver.BASE_LR:
        bad.append(f"SOLVER.BASE_LR_END ({solver.BASE_LR_END!r}) must not exceed SOLVER.BASE_LR ({solver.BASE_LR!r})")
    if not isinstance(solver.WARMUP_ITERS, int) or solver.WARMUP_ITERS < 0:
        bad.append(f"SOLVER.WARMUP_ITERS must be 0 or a positive integer, got {solver.WARMUP_ITERS!r}")
    if solver.LR_SCHEDULER_NAME == "WarmupMultiStepLR":
        steps = list(solver.STEPS)
        if steps != sorted(steps) or any(not isinstance(x, int) or x <= 0 for x in steps):
            bad.append(f"SOLVER.STEPS must be increasing positive iterations, got {tuple(steps)!r}")
        elif isinstance(solver.MAX_ITER, int) and steps and steps[-1] > solver.MAX_ITER:
            bad.append(f"SOLVER.STEPS {tuple(steps)!r} go past SOLVER.MAX_ITER ({solver.MAX_ITER}): the learning rate "
                       "would never drop there")
    return bad


def check_dataset_names(cfg, training=True):
    """DATASETS.TRAIN (to train) and DATASETS.TEST (to evaluate only) not empty, and every name registered."""
    if training and not cfg.DATASETS.TRAIN:
        raise ValueError("DATASETS.TRAIN is empty: name the dataset(s) to train on, e.g. DATASETS.TRAIN "
                         "'(\"mg_voc_2007_trainval\",)' (declare your own with DATASETS.CUSTOM)")
    if not training and not cfg.DATASETS.TEST:
        raise ValueError("--eval-only with an empty DATASETS.TEST: there is nothing to evaluate; name the "
                         "dataset(s), e.g. DATASETS.TEST '(\"mg_voc_2007_test\",)'")
    registered = set(DatasetCatalog.list())
    for key, names in (("DATASETS.TRAIN", cfg.DATASETS.TRAIN if training else ()), ("DATASETS.TEST", cfg.DATASETS.TEST)):
        for name in names:
            if name not in registered:
                ours = sorted(n for n in registered if n.startswith("mg_"))
                raise ValueError(f"{key} names {name!r}, which is not a registered dataset. This project's: "
                                 f"{', '.join(ours)}; declare your own with DATASETS.CUSTOM (see the README)")


def check_weights_for_inference(cfg, resume=False, flag="--eval-only"):
    """An evaluation or a drawing needs trained weights: without MODEL.WEIGHTS (or a checkpoint to resume) it is
    refused instead of running a randomly initialised network."""
    if cfg.MODEL.WEIGHTS:
        return
    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return
    raise ValueError(
        f"{flag} without MODEL.WEIGHTS would run a randomly initialised network. Give the trained weights: "
        f"MODEL.WEIGHTS path/to/model_final.pth" + (" (or --resume to use OUTPUT_DIR's last checkpoint)"
                                                    if flag == "--eval-only" else "")
    )


def previous_run_files(output_dir):
    """The files in `output_dir` that show a training run was started there."""
    found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(output_dir, "model_*.pth")))
    if os.path.isfile(os.path.join(output_dir, "last_checkpoint")):
        found.append("last_checkpoint")
    metrics = os.path.join(output_dir, "metrics.json")
    if os.path.isfile(metrics) and os.path.getsize(metrics) > 0:
        found.append("metrics.json")
    return found


def check_output_dir(output_dir, resume=False, eval_only=False, overwrite=False):
    """
    A new training run (neither --resume nor --eval-only) must not start in a folder holding another run,
    whose checkpoints it would replace and whose metrics.json it would append to, unless `overwrite`
    (--overwrite-output-dir). Returns the files of the previous run that an overwriting run replaces.
    """
    if resume or eval_only:
        return []
    found = previous_run_files(output_dir)
    if found and not overwrite:
        shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
        raise FileExistsError(
            f"OUTPUT_DIR {output_dir!r} already holds a training run ({shown}). Add --resume to continue it from "
            f"its last checkpoint, set another OUTPUT_DIR for a new run, or add --overwrite-output-dir to start "
            f"a new run there anyway (replacing its checkpoints as the new run saves)."
        )
    return found


def set_aside_previous_run(output_dir, found):
    """
    Before an overwriting run writes anything: the previous run's metrics.json, last_checkpoint and config.yaml
    are renamed with a ".replaced-<time>" suffix (kept, no longer read or appended to); its checkpoints stay
    until replaced. Returns the names set aside and the suffix, for the log ([] when nothing was).
    """
    if not found or not comm.is_main_process():
        return [], ""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    moved = []
    for name in ("metrics.json", "last_checkpoint", "config.yaml"):
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            os.replace(path, f"{path}.replaced-{stamp}")
            moved.append(name)
    return moved, f".replaced-{stamp}"


def check_num_classes(cfg, dataset_names):
    """MODEL.MUTUAL_GUIDE.NUM_CLASSES must equal the number of classes of every dataset used."""
    expected = cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) != expected:
            raise ValueError(
                f"Dataset {name!r} has {len(classes)} classes but MODEL.MUTUAL_GUIDE.NUM_CLASSES={expected}; "
                f"set MODEL.MUTUAL_GUIDE.NUM_CLASSES {len(classes)}"
            )
