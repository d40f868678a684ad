"""demo.py: class names of COCO-json and VOC datasets, --json, videos, the webcam's refusal, every kind of bad
input in one batch (the others still drawn, each failure naming its file), random weights refused, and a folder of
real VOC images drawn."""
import json
import os
import re
import uuid

import cv2
import demo
import numpy as np
import pytest
import torch
from conftest import ROOT, VOC_MINI_DATASET
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from mutual_guide.data import make_synthetic_dataset, register_custom_datasets
from mutual_guide.engine.predictor import MutualGuidePredictor
from mutual_guide.utils.drawing import draw_predictions

CONFIG = os.path.join(ROOT, "configs", "demo_shapes.yaml")
CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory, shapes_cfg):
    """A generated COCO-json dataset, its DATASETS.CUSTOM options, and weights of a (random) model saved to a file."""
    root = tmp_path_factory.mktemp("demo_shapes")
    name = f"dm{uuid.uuid4().hex[:6]}"
    info = make_synthetic_dataset(str(root / "data"), fmt="coco", num_train=1, num_test=3, seed=2, name=name)
    opts = ["MODEL.DEVICE", "cpu", "INPUT.SIZE", "64", "DATASETS.CUSTOM", str(info["custom_specs"]),
            "DATASETS.TEST", f"('{name}_test',)"]
    torch.manual_seed(0)
    weights = root / "model.pth"
    torch.save({"model": build_model(shapes_cfg(opts)).state_dict()}, weights)
    return {"info": info, "test": f"{name}_test", "opts": opts + ["MODEL.WEIGHTS", str(weights)]}


@pytest.fixture(scope="module")
def shapes_cfg(make_cfg):
    """shapes_cfg(opts): configs/demo_shapes.yaml with `opts`, its datasets registered."""

    def build(opts):
        cfg = make_cfg(config_file=CONFIG, opts=opts)
        register_custom_datasets(cfg)
        return cfg

    return build


def run(source, output, *extra, opts=()):
    """demo.main; the exit status when it exits (1: some input failed), else what it returns."""
    argv = ["--config-file", CONFIG, *source, "--output", output, *extra, "--opts", *opts]
    try:
        return demo.main([str(a) for a in argv])
    except SystemExit as e:
        return ("exit", e.code)


@pytest.mark.slow
def test_coco_json_datasets_draw_class_names(shapes, tmp_path, drawn):
    # The cause of the class numbers: a COCO json's names reach the metadata only when the dataset is read, and
    # the demo reads no dataset. demo.py now reads them from the json's categories.
    assert MetadataCatalog.get(shapes["test"]).get("thing_classes", None) is None
    images = shapes["info"]["splits"]["test"]["image_root"]
    count = run(["--input", os.path.join(images, "test_*.jpg")], tmp_path / "out", "--confidence-threshold", "0.0101",
                "--json", tmp_path / "p.json", opts=shapes["opts"])
    assert count == 3
    labels = [label for call in drawn for label in call["labels"]]
    assert labels and all(re.fullmatch(r"(circle|square|triangle) \d+%", label) for label in labels), labels[:5]
    with open(tmp_path / "p.json") as f:
        saved = json.load(f)
    assert saved["classes"] == CLASSES
    assert len(saved["predictions"]) == len(labels)
    assert all(p["class_name"] == CLASSES[p["class_id"]] for p in saved["predictions"])


@pytest.mark.slow
def test_dataset_option_names_the_classes_and_is_checked(shapes, tmp_path, write_voc, voc_object, drawn, capsys):
    root = write_voc(tmp_path / "voc", {"a": [voc_object("cat", (2, 2, 30, 30))]}, split="val", size=(96, 64))
    spec = f"pets{uuid.uuid4().hex[:6]}:voc:root={root};split=val;classes=cat,dog,bird"
    opts = shapes["opts"] + ["DATASETS.CUSTOM", str([spec] + shapes["info"]["custom_specs"])]
    image = os.path.join(root, "JPEGImages", "a.jpg")
    assert run(["--input", image], tmp_path / "out", "--dataset", spec.split(":")[0], "--confidence-threshold",
               "0.0101", opts=opts) == 1
    assert drawn[0]["labels"] and {label.split()[0] for label in drawn[0]["labels"]} <= {"cat", "dog", "bird"}
    capsys.readouterr()
    assert run(["--input", image], tmp_path / "out", "--dataset", "nowhere", opts=opts) == ("exit", 2)
    assert "--dataset 'nowhere' is not a registered dataset; declare it in DATASETS.CUSTOM" in capsys.readouterr().err
    assert run(["--input", image], tmp_path / "out", "--dataset", "mg_voc_2007_test", opts=opts) == ("exit", 2)
    assert ("Dataset 'mg_voc_2007_test' has 20 classes but MODEL.MUTUAL_GUIDE.NUM_CLASSES=3; set "
            "MODEL.MUTUAL_GUIDE.NUM_CLASSES 20, or name the dataset your classes come from with --dataset"
            in capsys.readouterr().err.replace("\n", " "))


@pytest.mark.slow
def test_json_holds_every_prediction_drawn_in_original_pixels(shapes, tmp_path, shapes_cfg):
    image = np.random.RandomState(0).randint(0, 255, (90, 200, 3)).astype(np.uint8)  # wide: x and y scale apart
    cv2.imwrite(str(tmp_path / "wide.png"), image)
    out_json = tmp_path / "saved" / "predictions.json"
    threshold = 0.0102
    assert run(["--input", tmp_path / "wide.png", tmp_path / "missing.jpg"], tmp_path / "out", "--json", out_json,
               "--confidence-threshold", threshold, opts=shapes["opts"]) == ("exit", 1)
    with open(out_json) as f:
        saved = json.load(f)
    # the oracle: the predictor itself on the same image, kept at the same threshold
    instances = MutualGuidePredictor(shapes_cfg(shapes["opts"]))(image)
    keep = instances.scores >= threshold
    assert 0 < int(keep.sum()) < 300
    boxes = [p["box_xyxy"] for p in saved["predictions"]]
    np.testing.assert_allclose(boxes, instances.pred_boxes.tensor[keep].numpy(), atol=0.006)
    np.testing.assert_allclose([p["score"] for p in saved["predictions"]], instances.scores[keep].numpy(), atol=1e-5)
    assert [p["class_id"] for p in saved["predictions"]] == instances.pred_classes[keep].tolist()
    assert {p["file"] for p in saved["predictions"]} == {str(tmp_path / "wide.png")}
    assert max(b[2] for b in boxes) <= 200 and max(b[3] for b in boxes) <= 90 and max(b[2] for b in boxes) > 90
    assert saved["inputs"] == [{"file": str(tmp_path / "wide.png"), "width": 200, "height": 90}]
    assert saved["failed"] == [{"file": str(tmp_path / "missing.jpg"), "error": "matches no image file"}]
    assert os.listdir(out_json.parent) == ["predictions.json"]  # written atomically: no temporary file left


def _write_video(path, frames, size=(96, 64), fps=10):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for k in range(frames):
        frame = np.full((size[1], size[0], 3), 40 + 20 * k, np.uint8)
        cv2.circle(frame, (20 + 8 * k, size[1] // 2), 12, (0, 0, 255), -1)
        writer.write(frame)
    writer.release()


def _read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@pytest.mark.slow
def test_video_is_drawn_frame_by_frame(shapes, tmp_path, shapes_cfg):
    _write_video(tmp_path / "clip.mp4", 6)
    first = _read_video(tmp_path / "clip.mp4")[0]
    drawing = draw_predictions(first, MutualGuidePredictor(shapes_cfg(shapes["opts"]))(first), None, 0.3)
    assert drawing.shape == (341, 512, 3)  # 96 x 64 enlarged
    expected = (342, 512, 3)  # even sides, as the encoders want

    assert run(["--video-input", tmp_path / "clip.mp4"], tmp_path / "out", "--json", tmp_path / "v.json",
               "--confidence-threshold", "0.0101", opts=shapes["opts"]) == 6
    frames = _read_video(tmp_path / "out" / "clip.mp4")  # a folder as --output: <folder>/<video name>.mp4
    assert len(frames) == 6 and {f.shape for f in frames} == {expected}
    with open(tmp_path / "v.json") as f:
        saved = json.load(f)
    assert saved["inputs"] == [{"file": str(tmp_path / "clip.mp4"), "frames": 6, "width": 96, "height": 64}]
    assert sorted({p["frame"] for p in saved["predictions"]}) == list(range(6))

    assert run(["--video-input", tmp_path / "clip.mp4"], tmp_path / "short.avi", "--max-frames", "4",
               opts=shapes["opts"]) == 4
    assert len(_read_video(tmp_path / "short.avi")) == 4

    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    assert run(["--video-input", tmp_path / "broken.mp4"], tmp_path / "out", opts=shapes["opts"]) == ("exit", 1)
    assert run(["--video-input", tmp_path / "clip.mp4"], tmp_path / "clip.mp4", opts=shapes["opts"]) == ("exit", 1)
    assert len(_read_video(tmp_path / "clip.mp4")) == 6  # the input is never overwritten


@pytest.mark.slow
def test_webcam_that_does_not_open_fails_clearly(shapes, tmp_path, monkeypatch, logged):
    messages = logged("demo")
    opened = []

    class NoCamera:
        def __init__(self, index):
            opened.append(index)

        def isOpened(self):
            return False

    monkeypatch.setattr(demo.cv2, "VideoCapture", NoCamera)
    assert run(["--webcam"], tmp_path / "out", opts=shapes["opts"]) == ("exit", 1)
    assert opened == [0]
    assert "webcam:0: OSError: no camera could be opened (cv2.VideoCapture(0)): is one connected, and free?" in messages
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_every_kind_of_bad_input_in_one_batch(shapes, tmp_path, logged):
    messages = logged("demo")
    inputs = tmp_path / "in"
    inputs.mkdir()
    (tmp_path / "empty").mkdir()
    (inputs / "broken.jpg").write_bytes(b"not an image")
    cv2.imwrite(str(inputs / "gray.png"), np.full((100, 80), 90, np.uint8))
    rgba = np.zeros((60, 90, 4), np.uint8)
    rgba[..., :3] = (30, 160, 220)  # fully transparent: the colour stays, the alpha is dropped
    cv2.imwrite(str(inputs / "rgba.png"), rgba)
    cv2.imwrite(str(inputs / "one_pixel.png"), np.full((1, 1, 3), 200, np.uint8))
    # large and huge images, cheap to write: 1-bit PNGs (PIL keeps them at one bit per pixel)
    Image.new("1", (3000, 2500), 1).save(inputs / "large.png")
    Image.new("1", (13000, 13000), 0).save(inputs / "huge.png")  # 169 megapixels: refused from the header

    _write_video(tmp_path / "clip.mp4", 2)  # given to --input by mistake

    result = run(["--input", inputs, tmp_path / "empty", tmp_path / "clip.mp4"], tmp_path / "out", "--json",
                 tmp_path / "p.json", "--confidence-threshold", "0.9", opts=shapes["opts"])
    assert result == ("exit", 1)
    with open(tmp_path / "p.json") as f:
        saved = json.load(f)
    failed = {os.path.basename(f["file"]): f["error"] for f in saved["failed"]}
    assert failed.keys() == {"broken.jpg", "huge.png", "empty", "clip.mp4"}
    assert failed["broken.jpg"].startswith("OSError: cannot read the image (UnidentifiedImageError")
    assert failed["clip.mp4"].endswith(") (a video? use --video-input)")
    assert failed["huge.png"].startswith("ValueError: 13000 x 13000 pixels (169 megapixels) is over "
                                         "--max-megapixels 150: decoded, it alone would take 0.5 GiB")
    assert failed["empty"] == "folder holds no image file (looked for .jpg, .jpeg, .png, .bmp, .tif, .tiff, .webp)"
    log = "\n".join(messages)
    assert "4 input(s) failed, 4 drawn" in log and f"{inputs / 'huge.png'}: ValueError: 13000 x 13000" in log

    assert os.listdir(tmp_path / "out") == ["in"]  # paths kept relative to the inputs' common folder
    drawings = {name: cv2.imread(str(tmp_path / "out" / "in" / name), cv2.IMREAD_UNCHANGED)
                for name in sorted(os.listdir(tmp_path / "out" / "in"))}
    assert {name: d.shape for name, d in drawings.items()} == {
        "gray.png": (640, 512, 3), "large.png": (1707, 2048, 3), "one_pixel.png": (512, 512, 3),
        "rgba.png": (341, 512, 3),
    }
    # below the corner note (the threshold and why): grey in colour; nothing scores 0.9 on a random network
    below_note = slice(80, None)
    assert (drawings["gray.png"][below_note] == 90).all()
    assert (drawings["rgba.png"][below_note] == (30, 160, 220)).all()
    assert (drawings["one_pixel.png"][below_note] == 200).all()
    assert (drawings["large.png"][below_note] == 255).all()

    # the same folder as input and output: each drawing would replace its input, so each is refused
    result = run(["--input", inputs / "gray.png"], inputs, opts=shapes["opts"])
    assert result == ("exit", 2)  # refused before anything is predicted
    assert (cv2.imread(str(inputs / "gray.png"), cv2.IMREAD_UNCHANGED) == 90).all()


def _demo(tmp_path, inputs, *extra):
    import demo

    return demo.main(["--config-file", os.path.join(ROOT, "configs", "demo_shapes.yaml"), "--input", *inputs,
                      "--output", str(tmp_path / "drawn"), *extra,
                      "--opts", "MODEL.DEVICE", "cpu", "INPUT.SIZE", "64"])


def test_demo_refuses_random_weights(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((40, 50, 3), np.uint8))
    with pytest.raises(SystemExit) as exit_:
        _demo(tmp_path, [str(tmp_path / "a.jpg")])
    assert exit_.value.code == 2
    assert "MODEL.WEIGHTS is not set, so the network would be randomly initialised" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "drawn")


def test_demo_keeps_going_past_bad_files_and_never_shares_an_output(tmp_path, logged):
    messages = logged("demo")
    rng = np.random.RandomState(0)
    for path in ("a/photo.jpg", "a/photo.png", "b/photo.jpg"):
        os.makedirs(tmp_path / os.path.dirname(path), exist_ok=True)
        cv2.imwrite(str(tmp_path / path), rng.randint(0, 255, (40, 50, 3)).astype(np.uint8))
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(SystemExit) as exit_:
        _demo(tmp_path, [str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "none" / "*.jpg")],
              "--allow-random-weights")
    assert exit_.value.code == 1
    drawn = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "drawn")
                   for d, _, fs in os.walk(tmp_path / "drawn") for f in fs)
    assert drawn == ["a/photo.jpg", "a/photo.png", "b/photo.jpg"]
    log = "\n".join(messages)
    assert "2 input(s) failed, 3 drawn" in log
    assert re.search(r"a/broken.jpg: OSError: cannot read the image", log)
    assert re.search(r"none/\*.jpg: matches no image file", log)


@pytest.mark.slow
def test_demo_script_draws_a_folder(voc_mini_root, tmp_path, voc_mini_cfg):
    torch.manual_seed(0)
    cfg = voc_mini_cfg()
    weights = tmp_path / "model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    out = tmp_path / "drawn"
    count = demo.main([
        "--config-file", os.path.join(ROOT, "configs", "mg_shufflenet_ssd_voc.yaml"),
        "--input", os.path.join(voc_mini_root, "JPEGImages"),
        "--output", str(out), "--confidence-threshold", "0.0",
        "--opts", "MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu",
        "DATASETS.CUSTOM", str(cfg.DATASETS.CUSTOM), "DATASETS.TEST", f"('{VOC_MINI_DATASET}',)",
    ])
    assert count == 2
    for name, size in (("000001.jpg", (725, 512)), ("000002.jpg", (764, 512))):
        drawn = cv2.imread(str(out / name))
        original = cv2.imread(os.path.join(voc_mini_root, "JPEGImages", name))
        enlarged = cv2.resize(original, size[::-1], interpolation=cv2.INTER_LINEAR)
        assert drawn.shape == (*size, 3)
        assert np.abs(drawn.astype(int) - enlarged.astype(int)).mean() > 10  # 300 boxes drawn over it
