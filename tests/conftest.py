"""
Shared test set-up for every folder below: the real VOC images, the one in-memory CPU config (`make_cfg`) and
train_net's arguments (`train_args`), hand-made VOC/COCO files, predictions to evaluate, the tools and the oracle
as modules, and random assignment inputs for the vectorised-against-oracle tests. Test files share helpers only
through these fixtures (and the constants ROOT, VOC_MINI, VOC_MINI_DATASET). The repository root, where
train_net.py and demo.py are, is on the import path through setup.cfg's `pythonpath`.
"""
import os
import uuid

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling.box_regression import Box2BoxTransform

from mutual_guide.config import add_mutual_guide_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Two real VOC 2007 images with annotations, beside the repository (never copied into it).
VOC_MINI = os.environ.get("MG_VOC_MINI", os.path.join(ROOT, "..", "shared", "data", "voc_mini"))


@pytest.fixture(scope="session")
def load_tool():
    """load_tool(name) -> the module of tools/<name>.py, loaded from its file (tools/ is not a package)."""
    import importlib.util

    def load(name):
        spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(ROOT, "tools", name + ".py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def oracle():
    """mutual_guide.utils.oracle: the plain per-object assignment and losses the vectorised ones are checked against."""
    from mutual_guide.utils import oracle as module

    return module


@pytest.fixture
def voc_mini_root():
    root = os.path.join(VOC_MINI, "VOC2007")
    if not os.path.isdir(root):
        pytest.skip(f"real VOC images not found at {root}")
    return root


VOC_MINI_DATASET = "voc_mini"  # the name `voc_mini_cfg` registers the real VOC images under


@pytest.fixture
def voc_mini_cfg(make_cfg, voc_mini_root):
    """voc_mini_cfg(*opts): the ShuffleNet-SSD VOC config whose DATASETS.TEST is the real VOC images, registered."""
    from mutual_guide.data import register_custom_datasets
    from mutual_guide.data.builtin import VOC_CLASS_NAMES

    def build(*opts):
        spec = f"root={voc_mini_root};split=trainval;classes={','.join(VOC_CLASS_NAMES)};year=2007"
        cfg = make_cfg(config_file="mg_shufflenet_ssd_voc.yaml", opts=[
            "DATASETS.CUSTOM", [f"{VOC_MINI_DATASET}:voc:{spec}"], "DATASETS.TEST", (VOC_MINI_DATASET,), *opts])
        register_custom_datasets(cfg)
        return cfg

    return build


@pytest.fixture(scope="session")
def make_cfg():
    """
    make_cfg(backbone=None, neck=None, size=None, num_classes=None, *, config_file=None, opts=()) -> a CPU config:
    the project's defaults, or `config_file` (a path, or a name in configs/) merged over them; then the network
    given (without a file, None means ShuffleNetV2-FPN at 320 with 80 classes, the cheapest to build; with a file,
    None keeps the file's value); then `opts` (KEY, VALUE, ...).
    """

    def build(backbone=None, neck=None, size=None, num_classes=None, *, config_file=None, opts=()):
        cfg = get_cfg()
        add_mutual_guide_config(cfg)
        if config_file is not None:
            cfg.merge_from_file(os.path.join(ROOT, "configs", config_file))  # join keeps an absolute path
        else:
            # the paper's detector as every config sets it, without ImageNet weights (nothing is downloaded)
            cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-MutualGuide.yaml"))
            cfg.MODEL.BACKBONE.PRETRAINED = ""
            backbone, neck = backbone or "ShuffleNetV2", neck or "FPN"
            size, num_classes = size or 320, num_classes or 80
        cfg.MODEL.DEVICE = "cpu"
        for key, value in (("MODEL.BACKBONE.NAME", backbone), ("MODEL.NECK.NAME", neck), ("INPUT.SIZE", size),
                           ("MODEL.MUTUAL_GUIDE.NUM_CLASSES", num_classes)):
            if value is not None:
                cfg.merge_from_list([key, value])
        cfg.merge_from_list(list(opts))
        return cfg

    return build


# ----------------------------------------------------------------------------- random assignment inputs
RANDOM_BATCH_CLASSES = 6  # classes of `random_batch`; the background label is 6


def _random_boxes(n, k, size, g, integer=False):
    xy = torch.rand(n, k, 2, generator=g) * size * 0.8
    wh = torch.rand(n, k, 2, generator=g) * size * 0.5 + 2
    boxes = torch.cat([xy, (xy + wh).clamp(max=size)], -1)
    return boxes.round() if integer else boxes


def _small_anchors(size=64):
    """Six anchors per cell at strides 8, 16, 32 of a 64 x 64 image (336 anchors)."""
    anchors = []
    for stride in (8, 16, 32):
        for y in range(0, size, stride):
            for x in range(0, size, stride):
                for s in (1.5, 3.0):
                    for ar in (0.5, 1.0, 2.0):
                        w, h = stride * s * ar**0.5, stride * s / ar**0.5
                        cx, cy = x + stride / 2, y + stride / 2
                        anchors.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return torch.tensor(anchors)


def _random_batch(seed, max_boxes, integer=False, duplicates=False):
    """
    4 images of a 64 x 64 frame: anchors [A, 4], per-image boxes and classes (image 0 has `max_boxes`, the last
    none), predicted boxes [4, A, 4] and logits [4, A, 6]. `integer` rounds every box (ties between anchors);
    `duplicates` repeats two boxes per image (ties between boxes).
    """
    g = torch.Generator().manual_seed(seed)
    anchors = _small_anchors()
    n, a = 4, len(anchors)
    counts = torch.randint(0, max_boxes + 1, (n,), generator=g).tolist()
    counts[0] = max_boxes  # G = max_boxes
    if max_boxes > 0:
        counts[-1] = 0  # always one empty image
    boxes = [_random_boxes(1, k, 64, g, integer)[0] for k in counts]
    if duplicates:
        boxes = [torch.cat([b, b[:2]]) if len(b) else b for b in boxes]
    classes = [torch.randint(0, RANDOM_BATCH_CLASSES, (len(b),), generator=g) for b in boxes]
    deltas = torch.randn(n, a, 4, generator=g) * 0.7
    pred = Box2BoxTransform((10.0, 10.0, 5.0, 5.0)).apply_deltas(deltas.view(-1, 4), anchors.repeat(n, 1))
    pred = pred.view(n, a, 4)
    if integer:
        pred = pred.round()
        pred[..., 2:] = torch.maximum(pred[..., 2:], pred[..., :2] + 1)
    logits = torch.randn(n, a, RANDOM_BATCH_CLASSES, generator=g) * 2
    return anchors, boxes, classes, pred, logits


@pytest.fixture
def random_batch():
    """`_random_batch(seed, max_boxes, integer=False, duplicates=False)`: random assignment inputs."""
    return _random_batch


@pytest.fixture
def labelled_batch(random_batch, oracle):
    """
    `labelled(seed, max_boxes, mutual, integer=False, duplicates=False)`: a random batch labelled by the
    vectorised matcher and by the per-object oracle. Returns (inputs, gt_boxes, labels, expected): inputs are
    random_batch's (anchors, boxes, classes, pred, logits), gt_boxes the padded [N, G, 4] boxes.
    """
    from detectron2.structures import Boxes, Instances

    from mutual_guide.modeling.assignment import build_anchor_matcher, pad_ground_truth

    def labelled(seed, max_boxes, mutual, integer=False, duplicates=False):
        anchors, boxes, classes, pred, logits = inputs = random_batch(seed, max_boxes, integer, duplicates)
        instances = [Instances((64, 64), gt_boxes=Boxes(b), gt_classes=c) for b, c in zip(boxes, classes)]
        gt_boxes, gt_classes, valid = pad_ground_truth(instances)
        num_classes = logits.shape[-1]
        matcher = build_anchor_matcher(mutual, (0.4, 0.5), num_classes)
        labels = matcher(anchors, gt_boxes, gt_classes, valid, pred, logits)
        expected = oracle.oracle_label_anchors(anchors, boxes, classes, num_classes, pred, logits,
                                               mutual_guidance=mutual)
        return inputs, gt_boxes, labels, expected

    return labelled


@pytest.fixture
def random_boxes():
    """`_random_boxes(n, k, size, generator, integer=False)`: [n, k, 4] XYXY boxes inside a size x size frame."""
    return _random_boxes


# ----------------------------------------------------------------------------- hand-made VOC folders
def voc_object_xml(name, box, difficult=None, pose=True, truncated=True):
    """One <object> of a VOC XML; `box` is (xmin, ymin, xmax, ymax) written as given (ints or floats)."""
    extra = ("<pose>Left</pose>" if pose else "") + ("<truncated>0</truncated>" if truncated else "")
    extra += f"<difficult>{difficult}</difficult>" if difficult is not None else ""
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name>{extra}<bndbox>{coords}</bndbox></object>"


@pytest.fixture
def write_voc():
    """
    Writes a VOC-layout folder: write_voc(root, {image id: objects}, split="train", size=(w, h), ext=".jpg",
    with_size=True). `objects` is a list of voc_object_xml strings, or a whole XML text (str) written as is.
    Images are random noise of `size`. Returns the root.
    """
    import cv2
    import numpy as np

    def write(root, images, split="train", size=(64, 48), ext=".jpg", with_size=True):
        for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        rng = np.random.RandomState(0)
        for image_id, objects in images.items():
            w, h = size
            cv2.imwrite(os.path.join(root, "JPEGImages", image_id + ext), rng.randint(0, 255, (h, w, 3)).astype("uint8"))
            if isinstance(objects, str):
                text = objects
            else:
                size_xml = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if with_size else ""
                text = f"<annotation><filename>{image_id}{ext}</filename>{size_xml}{''.join(objects)}</annotation>"
            with open(os.path.join(root, "Annotations", image_id + ".xml"), "w") as f:
                f.write(text)
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("\n".join(images))  # no final newline: a one-line split file is a single id
        return str(root)

    return write


@pytest.fixture
def voc_object():
    return voc_object_xml


@pytest.fixture
def write_coco():
    """
    write_coco(folder, data, sizes=((64, 48),)) -> (json path, image folder): `data` (a dict, or a text written as
    is) as folder/ann.json, and black images folder/images/<k>.jpg of the given (width, height) sizes.
    """
    import json

    import cv2
    import numpy as np

    def write(folder, data, sizes=((64, 48),)):
        (folder / "images").mkdir(exist_ok=True)
        for k, (w, h) in enumerate(sizes):
            cv2.imwrite(str(folder / "images" / f"{k}.jpg"), np.zeros((h, w, 3), np.uint8))
        path = folder / "ann.json"
        path.write_text(json.dumps(data) if not isinstance(data, str) else data)
        return str(path), str(folder / "images")

    return write


@pytest.fixture
def shapes_dataset():
    """
    shapes_dataset(root, fmt="coco", num_train=4, num_test=2) -> make_synthetic_dataset's info: the generated
    shapes at 128 px under a name of its own.
    """
    from mutual_guide.data import make_synthetic_dataset

    def make(root, fmt="coco", num_train=4, num_test=2):
        return make_synthetic_dataset(str(root), fmt, num_train=num_train, num_test=num_test, image_size=128, seed=2,
                                      name=f"f{uuid.uuid4().hex[:8]}")

    return make


@pytest.fixture
def unique_name():
    """unique_name(prefix) -> prefix_<8 hex digits>: a dataset name no other test registers."""
    return lambda prefix: f"{prefix}_{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------- evaluating hand-made predictions
@pytest.fixture
def predicted_instances():
    """predicted_instances(boxes, scores, classes, (height, width)) -> the Instances a detector would return."""
    from detectron2.structures import Boxes, Instances

    def build(boxes, scores, classes, size):
        instances = Instances(size)
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.tensor(scores, dtype=torch.float32)
        instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
        return instances

    return build


@pytest.fixture
def ground_truth_as_predictions():
    """ground_truth_as_predictions(record) -> (boxes XYXY, scores 0.9, classes): a record's objects as predictions."""
    from detectron2.structures import BoxMode

    def predict(record):
        anns = record["annotations"]
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        return boxes, [0.9] * len(anns), [a["category_id"] for a in anns]

    return predict


@pytest.fixture
def evaluate_predictions(predicted_instances):
    """evaluate_predictions(evaluator, records, predict) -> the evaluator's "bbox" results, with
    predict(record) -> (boxes, scores, classes) for every record."""

    def evaluate(evaluator, records, predict):
        evaluator.reset()
        for r in records:
            instances = predicted_instances(*predict(r), (r["height"], r["width"]))
            evaluator.process([r], [{"instances": instances}])
        return evaluator.evaluate()["bbox"]

    return evaluate


@pytest.fixture(scope="session")
def train_args():
    """
    train_net arguments for a small CPU run on a synthetic dataset (make_synthetic_dataset's `info`):
    train_args(info, output_dir, *opts, eval_only=False, resume=False, overwrite=False, as_argv=False) (the
    command line itself with as_argv). ResNet18-FPN at 128, batch 2, no augmentation, no workers, no
    evaluation during training; `opts` come last and override any of these.
    """
    import train_net

    def build(info, output_dir, *opts, eval_only=False, resume=False, overwrite=False, as_argv=False):
        name = info["custom_specs"][0].split(":")[0][: -len("_train")]
        argv = ["--config-file", os.path.join(ROOT, "configs", "demo_shapes.yaml")]
        argv += (["--eval-only"] if eval_only else []) + (["--resume"] if resume else [])
        argv += ["--overwrite-output-dir"] if overwrite else []
        argv += [
            "OUTPUT_DIR", str(output_dir), "DATASETS.CUSTOM", str(info["custom_specs"]),
            "DATASETS.TRAIN", f"('{name}_train',)", "DATASETS.TEST", f"('{name}_test',)",
            "MODEL.MUTUAL_GUIDE.NUM_CLASSES", "3", "INPUT.SIZE", "128", "INPUT.MG_AUGMENT", "False",
            "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.BASE_LR", "0.02", "MODEL.BACKBONE.NAME", "ResNet18", "MODEL.NECK.NAME", "FPN",
            "TEST.EVAL_PERIOD", "0",
        ]
        argv += [str(o) for o in opts]
        return argv if as_argv else train_net.argument_parser().parse_args(argv)

    return build


@pytest.fixture
def logged():
    """
    logged(name) -> a list that receives the messages logged by logger `name` and its children for the rest of
    the test. pytest's caplog listens at the root logger, which detectron2's setup_logger cuts off (propagate
    False on "detectron2" and, through train_net.setup, on "mutual_guide") once any test has run train_net.
    """
    import logging

    attached = []

    class _Collect(logging.Handler):
        def __init__(self, sink):
            super().__init__(logging.DEBUG)
            self.sink = sink

        def emit(self, record):
            self.sink.append(record.getMessage())

    def listen(name):
        messages = []
        logger, handler = logging.getLogger(name), _Collect(messages)
        attached.append((logger, handler, logger.level))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        return messages

    yield listen
    for logger, handler, level in attached:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def drawn(monkeypatch):
    """Every Visualizer.overlay_instances call's boxes (drawing's pixels), labels and label heights (drawing's
    pixels), for the rest of the test."""
    import numpy as np

    from detectron2.utils.visualizer import Visualizer

    calls = []
    overlay, draw_text = Visualizer.overlay_instances, Visualizer.draw_text

    def spy_overlay(self, *, boxes=None, labels=None, **kwargs):
        calls.append({"boxes": np.asarray(boxes) * self.output.scale, "labels": list(labels or []), "text_px": [],
                      "label_corners": [], "note": None})
        return overlay(self, boxes=boxes, labels=labels, **kwargs)

    def spy_text(self, text, position, *, font_size=None, **kwargs):
        if isinstance(kwargs.get("color"), str) and kwargs["color"] == "w":  # the corner note of draw_boxes
            calls[-1]["note"] = text
        else:
            # matplotlib sizes text in points at the figure's dpi; the Visualizer multiplies by its scale
            calls[-1]["text_px"].append((font_size or self._default_font_size) * self.output.scale * self.output.dpi / 72)
            calls[-1]["labels"].append(text)
            calls[-1]["label_corners"].append(tuple(position))
        return draw_text(self, text, position, font_size=font_size, **kwargs)

    monkeypatch.setattr(Visualizer, "overlay_instances", spy_overlay)
    monkeypatch.setattr(Visualizer, "draw_text", spy_text)
    return calls


# ----------------------------------------------------------------------------- a dataset with every data fault
@pytest.fixture
def nasty_dataset(tmp_path, write_voc, voc_object):
    """
    One VOC folder (split "train", classes circle,square,triangle) and one COCO json over the same images (its
    categories square, circle, triangle: the training classes in another order), holding together:
    `truncated` (a JPEG cut in half), `sixteen_bit` (a 16-bit PNG), `alpha` (an RGBA PNG), `rotated` (a JPEG
    stored 64 x 48 with EXIF orientation 6, annotated with its stored size, not the 48 x 64 training sees) and
    the class triangle, declared and never drawn. Returns {"voc_root", "voc_classes", "json_file",
    "image_root", "files": {fault: image path}}.
    """
    import json

    import cv2
    import numpy as np
    from PIL import Image

    objects = [voc_object("circle", (3, 3, 20, 20)), voc_object("square", (30, 20, 50, 40))]
    ids = ["good", "truncated", "sixteen_bit", "alpha", "rotated"]
    root = write_voc(tmp_path / "nasty_voc", {i: objects for i in ids}, size=(64, 48))
    images = os.path.join(root, "JPEGImages")
    files = {i: os.path.join(images, i + ".jpg") for i in ids}
    with open(files["truncated"], "rb") as f:
        data = f.read()
    with open(files["truncated"], "wb") as f:
        f.write(data[: len(data) // 2])
    rng = np.random.RandomState(1)
    for fault, array in (("sixteen_bit", rng.randint(0, 65535, (48, 64, 3)).astype(np.uint16)),
                         ("alpha", rng.randint(0, 255, (48, 64, 4)).astype(np.uint8))):
        os.remove(files[fault])
        files[fault] = os.path.join(images, fault + ".png")
        cv2.imwrite(files[fault], array)
    exif = Image.Exif()
    exif[274] = 6  # rotate 90 degrees clockwise to display: 48 wide, 64 high
    Image.fromarray(rng.randint(0, 255, (48, 64, 3)).astype(np.uint8)).save(files["rotated"], exif=exif)

    categories = [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}, {"id": 3, "name": "triangle"}]
    coco = {"images": [], "annotations": [], "categories": categories}
    for k, i in enumerate(ids):
        coco["images"].append({"id": k, "file_name": os.path.basename(files[i]), "width": 64, "height": 48})
        coco["annotations"] += [{"id": 2 * k, "image_id": k, "category_id": 2, "bbox": [2, 2, 18, 18]},
                                {"id": 2 * k + 1, "image_id": k, "category_id": 1, "bbox": [29, 19, 21, 21]}]
    json_file = os.path.join(str(tmp_path), "nasty_coco.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    return {"voc_root": root, "voc_classes": "circle,square,triangle", "json_file": json_file,
            "image_root": images, "files": files}


@pytest.fixture(scope="session")
def randomize_batchnorm():
    """randomize_batchnorm(model, seed=0) -> model: non-trivial BatchNorm statistics and affine parameters, so that
    no BatchNorm is close to an identity (what folding and key conversion must then keep exactly)."""

    def randomize(model, seed=0):
        g = torch.Generator().manual_seed(seed)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
        return model

    return randomize

