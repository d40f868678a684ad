"""
Shared test set-up: the real VOC images, a CPU config, the tools and the oracle as modules, and random
assignment inputs for the vectorised-against-oracle tests. (The repository root, where train_net.py and demo.py
are, is on the import path through setup.cfg's `pythonpath`.)
"""
import os

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


def make_cfg(backbone="ShuffleNetV2", neck="FPN", size=320, num_classes=80):
    """A CPU config of the given network, every other key at the project's default."""
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.MODEL.NECK.NAME = neck
    cfg.INPUT.SIZE = size
    cfg.MODEL.MUTUAL_GUIDE.NUM_CLASSES = num_classes
    return cfg


@pytest.fixture
def cfg_factory():
    """`make_cfg(backbone="ShuffleNetV2", neck="FPN", size=320, num_classes=80)`: a CPU config of that network."""
    return make_cfg


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
        calls.append({"boxes": np.asarray(boxes) * self.output.scale, "labels": list(labels), "text_px": []})
        return overlay(self, boxes=boxes, labels=labels, **kwargs)

    def spy_text(self, text, position, *, font_size=None, **kwargs):
        # matplotlib sizes text in points at the figure's dpi; the Visualizer multiplies by its scale
        calls[-1]["text_px"].append((font_size or self._default_font_size) * self.output.scale * self.output.dpi / 72)
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
