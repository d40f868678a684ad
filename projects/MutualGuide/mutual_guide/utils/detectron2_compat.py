"""
Every private name of detectron2 this project relies on, in one place.

detectron2 does not promise to keep names that start with an underscore. Each one used here is either reached
through a function of this module, or (for private methods our subclasses override, and private attributes
they read) listed in `OVERRIDDEN_PRIVATE_METHODS` and `INHERITED_PRIVATE_ATTRIBUTES`. tests/utils/test_detectron2_compat.py checks each against the installed
detectron2, so an upgrade that renames or changes one fails there, by name, rather than deep inside a run.
"""
import contextlib

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
from detectron2.engine import defaults as _engine_defaults
from detectron2.engine.hooks import BestCheckpointer
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.modeling.box_regression import _dense_box_regression_loss
from detectron2.utils.events import JSONWriter

__all__ = [
    "INHERITED_PRIVATE_ATTRIBUTES",
    "OVERRIDDEN_PRIVATE_METHODS",
    "best_checkpointer_metric",
    "builtin_coco_metadata",
    "decode_multi_level_predictions",
    "dense_box_regression_loss",
    "ddp_without_device_ids",
    "ema_update",
    "init_json_writer",
    "last_evaluation_results",
    "registered_hooks",
    "store_evaluation_results",
    "set_visualizer_font_size",
    "transpose_dense_predictions",
    "visualizer_font_size",
]

# (class, private method, its parameters after self): methods of detectron2 classes that our subclasses override
# and call through super(). If detectron2 renames one, our override would silently stop being called.
OVERRIDDEN_PRIVATE_METHODS = (
    (COCOEvaluator, "_eval_predictions", ("predictions", "img_ids")),  # evaluation/evaluators.py
    (COCOEvaluator, "_derive_coco_results", ("coco_eval", "iou_type", "class_names")),  # evaluation/evaluators.py
    (BestCheckpointer, "_best_checking", ()),  # engine/hooks.py
    (DetectionCheckpointer, "_load_model", ("checkpoint",)),  # checkpoint/checkpointer.py
)


# (class, method, private attributes it sets): attributes of detectron2 evaluators that our subclasses read
# (evaluation/evaluators.py). If detectron2 renames one, our evaluator would fail or read stale state.
INHERITED_PRIVATE_ATTRIBUTES = (
    (COCOEvaluator, "__init__", ("_coco_api", "_metadata")),
    (COCOEvaluator, "evaluate", ("_results",)),
    (PascalVOCDetectionEvaluator, "reset", ("_predictions",)),
)


def builtin_coco_metadata():
    """detectron2's COCO metadata (class names, ids, colours) for the builtin COCO datasets."""
    return _get_builtin_metadata("coco")


def dense_box_regression_loss(*args, **kwargs):
    """detectron2's box loss of RetinaNet (smooth L1, GIoU, DIoU, CIoU) over the foreground anchors."""
    return _dense_box_regression_loss(*args, **kwargs)


def decode_multi_level_predictions(detector, anchors, scores, deltas, score_thresh, topk_candidates, image_size):
    """DenseDetector's candidates of one image before NMS: Instances (pred_boxes, scores, pred_classes) of the
    best `topk_candidates` per level above `score_thresh`, what RetinaNet.inference_single_image passes to NMS."""
    return detector._decode_multi_level_predictions(anchors, scores, deltas, score_thresh, topk_candidates, image_size)


def ema_update(detector, name: str, value: float, initial_value: float, momentum: float = 0.9) -> float:
    """DenseDetector's moving average of a loss normaliser, kept on the detector as RetinaNet keeps its own."""
    return detector._ema_update(name, value, initial_value, momentum)


def transpose_dense_predictions(detector, predictions, dims_per_anchor):
    """DenseDetector's per-level [N, A*K, H, W] -> [N, H*W*A, K], in its anchor order."""
    return detector._transpose_dense_predictions(predictions, dims_per_anchor)


def visualizer_font_size(visualizer) -> float:
    return visualizer._default_font_size


def set_visualizer_font_size(visualizer, size: float) -> None:
    """The Visualizer's base size: its labels' points, and a quarter of it its boxes' line width."""
    visualizer._default_font_size = size


def init_json_writer(writer, file_handle, window_size: int) -> None:
    """What JSONWriter.__init__ sets, with a file handle of ours (JSONWriter opens its own in append mode)."""
    writer._file_handle = file_handle
    writer._window_size = window_size
    writer._last_write = -1


def best_checkpointer_metric(hook) -> str:
    """The metric a BestCheckpointer tracks."""
    return hook._val_metric


def registered_hooks(trainer):
    """The hooks of a detectron2 trainer, in the order they run (TrainerBase keeps them in `_hooks`)."""
    return list(trainer._hooks)


def last_evaluation_results(trainer):
    """The results of the trainer's last evaluation (DefaultTrainer keeps them), or None before any."""
    return getattr(trainer, "_last_eval_results", None)


def store_evaluation_results(trainer, results) -> None:
    """Keep `results` where DefaultTrainer keeps its last evaluation's (for an evaluation function of our own)."""
    trainer._last_eval_results = results


@contextlib.contextmanager
def ddp_without_device_ids():
    """
    For the duration of DefaultTrainer.__init__: its call of `create_ddp_model(model, broadcast_buffers=False)`
    gets `device_ids=None`. Without it create_ddp_model passes `device_ids=[local rank]`, which
    DistributedDataParallel refuses for a module on the CPU; create_ddp_model takes the argument, but
    DefaultTrainer.__init__ gives no way to pass it short of copying that method.
    """
    original = _engine_defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    _engine_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        _engine_defaults.create_ddp_model = original
