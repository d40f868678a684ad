"""
mutual_guide.utils.detectron2_compat against the installed detectron2: one test per private name it reaches, on
tiny inputs with the expected values written out, so that an upgrade that renames or changes one fails here.
"""
import inspect
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine import defaults as engine_defaults
from detectron2.modeling import RetinaNet
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage, JSONWriter
from detectron2.utils.visualizer import Visualizer

from mutual_guide.utils import detectron2_compat as compat


def bare_retinanet():
    """A RetinaNet object without its network: the private methods under test read none of it."""
    detector = RetinaNet.__new__(RetinaNet)
    torch.nn.Module.__init__(detector)
    return detector


def test_builtin_coco_metadata_has_the_80_classes_and_their_ids():
    metadata = compat.builtin_coco_metadata()
    assert len(metadata["thing_classes"]) == 80
    assert metadata["thing_classes"][0] == "person" and metadata["thing_classes"][-1] == "toothbrush"
    # COCO's category ids skip 12, 26, ...: id 90 (toothbrush) is the 80th contiguous class
    assert metadata["thing_dataset_id_to_contiguous_id"][90] == 79


def test_dense_box_regression_loss_is_the_l1_of_the_foreground_deltas():
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]))]
    gt_boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 1.0, 1.0]])]  # anchor 0's target deltas are 0
    deltas = [torch.tensor([[[0.1, -0.2, 0.3, 0.0], [5.0, 5.0, 5.0, 5.0]]])]
    fg_mask = torch.tensor([[True, False]])  # anchor 1 is background: its large deltas do not count
    loss = compat.dense_box_regression_loss(anchors, Box2BoxTransform((1.0, 1.0, 1.0, 1.0)), deltas, gt_boxes,
                                            fg_mask, box_reg_loss_type="smooth_l1", smooth_l1_beta=0.0)
    assert loss.item() == pytest.approx(0.6)


def test_decode_multi_level_predictions_keeps_the_top_k_above_the_threshold_per_level():
    detector = bare_retinanet()
    detector.box2box_transform = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]])),
               Boxes(torch.tensor([[0.0, 0.0, 20.0, 20.0]]))]
    scores = [torch.tensor([[0.9, 0.1], [0.3, 0.6]]), torch.tensor([[0.05, 0.7]])]  # [anchors, 2 classes]
    deltas = [torch.zeros(2, 4), torch.tensor([[0.1, 0.0, 0.0, 0.0]])]  # level 1 moved right by 0.1 * 20
    pred = compat.decode_multi_level_predictions(detector, anchors, scores, deltas, 0.2, 2, (32, 32))
    # level 0: 0.9, 0.6 (0.3 is third, cut by top-2); level 1: 0.7; 0.1 and 0.05 under the threshold
    assert pred.scores.tolist() == pytest.approx([0.9, 0.6, 0.7])
    assert pred.pred_classes.tolist() == [0, 1, 1]
    assert pred.pred_boxes.tensor.tolist() == [[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0],
                                               [2.0, 0.0, 22.0, 20.0]]


def test_ema_update_starts_at_the_initial_value_and_keeps_the_moving_average():
    detector = bare_retinanet()
    # 0.9 * 100 + 0.1 * 10 on the first call, then 0.9 * 91 + 0.1 * 1
    assert compat.ema_update(detector, "loss_normalizer", 10.0, 100.0) == pytest.approx(91.0)
    assert compat.ema_update(detector, "loss_normalizer", 1.0, 100.0) == pytest.approx(82.0)
    assert compat.ema_update(detector, "loss_normalizer", 2.0, 100.0, momentum=0.5) == pytest.approx(42.0)
    assert detector.loss_normalizer == pytest.approx(42.0)  # kept on the detector, as RetinaNet keeps its own


def test_transpose_dense_predictions_goes_from_n_ak_h_w_to_n_hwa_k():
    n, a, k, h, w = 2, 3, 4, 2, 5
    level = torch.arange(n * a * k * h * w, dtype=torch.float32).view(n, a * k, h, w)
    (logits,), (deltas,) = compat.transpose_dense_predictions(bare_retinanet(), [[level], [level]], [k, a * k // 3])
    assert logits.shape == (n, h * w * a, k) and deltas.shape == (n, h * w * a * k // 4, 4)
    # row (y, x, anchor) holds channels anchor*K .. anchor*K + K-1 at (y, x): anchors vary fastest
    y, x, anchor = 1, 3, 2
    row = (y * w + x) * a + anchor
    assert logits[1, row].tolist() == level[1, anchor * k : (anchor + 1) * k, y, x].tolist()


def test_visualizer_font_size_is_read_and_set():
    visualizer = Visualizer(np.zeros((100, 200, 3), dtype=np.uint8))
    assert compat.visualizer_font_size(visualizer) == max(np.sqrt(100 * 200) // 90, 10)  # detectron2's default
    compat.set_visualizer_font_size(visualizer, 30.0)
    assert compat.visualizer_font_size(visualizer) == 30.0
    drawn = []
    visualizer.draw_text = lambda text, position, *, font_size=None, **kwargs: drawn.append(font_size)
    visualizer.overlay_instances(boxes=np.array([[10.0, 10.0, 50.0, 50.0]]), labels=["cat"])
    # the label is drawn at a size proportional to the one set (detectron2 scales it by the box's height)
    assert len(drawn) == 1 and drawn[0] >= 30.0 * 0.5 * 1.2 and drawn[0] <= 30.0


def test_init_json_writer_then_write_appends_one_line_per_iteration(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 2}\n')
    writer, handle = JSONWriter.__new__(JSONWriter), open(path, "a")
    compat.init_json_writer(writer, handle, window_size=1)
    with EventStorage(start_iter=3) as storage:
        storage.put_scalar("loss", 0.5)
        writer.write()
        storage.step()
        storage.put_scalar("loss", 0.25)
        writer.write()
        writer.write()  # nothing new: no line
    handle.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"iteration": 2}, {"iteration": 3, "loss": 0.5}, {"iteration": 4, "loss": 0.25}]


def test_best_checkpointer_metric_is_the_one_given(tmp_path):
    checkpointer = DetectionCheckpointer(torch.nn.Linear(1, 1), str(tmp_path))
    hook = hooks.BestCheckpointer(10, checkpointer, "bbox/AP50", mode="max")
    assert compat.best_checkpointer_metric(hook) == "bbox/AP50"


def test_last_evaluation_results_are_what_defaulttrainers_evaluation_returned(make_cfg):
    trainer = DefaultTrainer.__new__(DefaultTrainer)
    assert compat.last_evaluation_results(trainer) is None  # before any evaluation
    trainer.cfg = make_cfg()
    trainer.cfg.TEST.EVAL_PERIOD = 5
    trainer._trainer = SimpleNamespace(model=torch.nn.Linear(1, 1))  # DefaultTrainer.model reads it there
    trainer.checkpointer = DetectionCheckpointer(trainer.model)
    trainer.build_writers = lambda: []
    results = {"bbox": {"AP50": 42.0}}
    trainer.test = lambda cfg, model: results
    (evaluation,) = [h for h in trainer.build_hooks() if isinstance(h, hooks.EvalHook)]
    evaluation._func()
    assert compat.last_evaluation_results(trainer) is results


def test_stored_evaluation_results_are_read_back_where_defaulttrainer_keeps_its_own():
    trainer = DefaultTrainer.__new__(DefaultTrainer)
    results = {"bbox": {"AP50": 7.0}}
    compat.store_evaluation_results(trainer, results)
    assert compat.last_evaluation_results(trainer) is results
    assert "self._last_eval_results = self.test(" in inspect.getsource(DefaultTrainer.build_hooks)


def test_registered_hooks_are_the_trainers_in_their_order():
    from detectron2.engine import HookBase, TrainerBase

    trainer = TrainerBase()
    first, second = HookBase(), HookBase()
    trainer.register_hooks([first, None, second])
    assert compat.registered_hooks(trainer) == [first, second]


def test_ddp_without_device_ids_passes_none_and_restores_create_ddp_model(monkeypatch):
    received = []
    original = lambda model, **kwargs: received.append(kwargs) or model  # noqa: E731
    monkeypatch.setattr(engine_defaults, "create_ddp_model", original)
    model = torch.nn.Linear(1, 1)
    with compat.ddp_without_device_ids():
        assert engine_defaults.create_ddp_model is not original
        # DefaultTrainer.__init__ calls it by this module attribute, with broadcast_buffers only
        assert engine_defaults.create_ddp_model(model, broadcast_buffers=False) is model
    assert engine_defaults.create_ddp_model is original
    assert received == [{"broadcast_buffers": False, "device_ids": None}]
    assert "create_ddp_model(model, broadcast_buffers=False)" in inspect.getsource(DefaultTrainer.__init__)


def test_ddp_without_device_ids_restores_create_ddp_model_after_an_error():
    original = engine_defaults.create_ddp_model
    with pytest.raises(RuntimeError, match="inside"):
        with compat.ddp_without_device_ids():
            raise RuntimeError("inside")
    assert engine_defaults.create_ddp_model is original


@pytest.mark.parametrize("cls, method, parameters", compat.OVERRIDDEN_PRIVATE_METHODS,
                         ids=[f"{c.__name__}.{m}" for c, m, _ in compat.OVERRIDDEN_PRIVATE_METHODS])
def test_overridden_private_method_exists_with_its_parameters(cls, method, parameters):
    assert callable(getattr(cls, method, None)), f"detectron2's {cls.__name__} has no {method} any more"
    names = tuple(inspect.signature(getattr(cls, method)).parameters)
    assert names[0] == "self" and names[1:] == parameters


@pytest.mark.parametrize("cls, method, attributes", compat.INHERITED_PRIVATE_ATTRIBUTES,
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_inherited_private_attribute_is_still_set_where_we_expect_it(cls, method, attributes):
    source = inspect.getsource(getattr(cls, method))
    for name in attributes:
        assert f"self.{name} =" in source, f"{cls.__name__}.{method} no longer sets self.{name}"
