"""
The faults of issue 9, each with the message it must now give: broken datasets, missing weights, runs that
would overwrite another, interrupted saves, bad config values. Small: 128 px, a handful of iterations.
"""
import json
import os
import re
import uuid

import cv2
import numpy as np
import pytest
import train_net
from conftest import ROOT

from detectron2.engine import default_argument_parser

from mutual_guide.data import make_synthetic_dataset
from mutual_guide.data.check import check_dataset
from mutual_guide.data.coco_reader import read_coco_dataset
from mutual_guide.data.loading import training_dataset_dicts
from mutual_guide.data.problems import DatasetError


def _shapes(root, fmt="coco", num_train=4, num_test=2):
    name = f"f{uuid.uuid4().hex[:8]}"
    return make_synthetic_dataset(str(root), fmt, num_train=num_train, num_test=num_test, image_size=128, seed=2,
                                  name=name)


def _edit_json(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


# ----------------------------------------------------------------------------- COCO files, one fault each
_COCO_FAULTS = {  # case -> (edit of the json, message expected, images still usable out of 4; 0: fatal)
    "malformed json": (None, r"malformed JSON at line 1, column \d+", 0),
    "no annotations": (lambda d: d.pop("annotations"),
                       r"'annotations' is missing, expected a list \(without it every image would train as background\)",
                       0),
    "no categories": (lambda d: d.pop("categories"), r"'categories' is missing, expected a list", 0),
    "duplicated id": (lambda d: d["images"][1].update(id=d["images"][0]["id"]),
                      r"image 'train_00001.jpg' has the id 1 of other image\(s\) too: train_00000.jpg", 2),
    "duplicated file": (lambda d: d["images"][1].update(file_name=d["images"][0]["file_name"]),
                        r"file_name 'train_00000.jpg' is used by 2 images", 2),
    "no bbox": (lambda d: d["annotations"][0].pop("bbox"), r"annotation 1 of image id 1 \(train_00000.jpg\): no 'bbox'",
                3),
    "unknown category": (lambda d: d["annotations"][0].update(category_id=9),
                         r"category_id 9 is not in 'categories' \(ids \[1, 2, 3\]\)", 3),
    "reversed box": (lambda d: d["annotations"][0]["bbox"].__setitem__(2, -5),
                     r"box reversed: negative width in bbox \[\d+, \d+, -5, \d+\]", 3),
}


@pytest.mark.parametrize("case", sorted(_COCO_FAULTS))
def test_coco_faults_name_the_file(tmp_path, case):
    info = _shapes(tmp_path)
    json_file = info["splits"]["train"]["json_file"]
    edit, expected, usable = _COCO_FAULTS[case]
    if edit is None:
        with open(json_file, "a") as f:
            f.write("}")
    else:
        _edit_json(json_file, edit)
    records, problems, _ = read_coco_dataset(json_file, info["splits"]["train"]["image_root"])
    assert all(p.path == json_file and p.error for p in problems)
    assert any(re.search(expected, p.message) for p in problems), [p.message for p in problems]
    assert any(p.fatal for p in problems) == (usable == 0)
    assert len(records) == usable


def test_datasets_registered_with_detectrons_functions_are_checked_too(tmp_path):
    from detectron2.data.datasets import register_coco_instances

    info = _shapes(tmp_path)
    split = info["splits"]["train"]
    _edit_json(split["json_file"], lambda d: d["annotations"][0]["bbox"].__setitem__(3, -4))
    os.remove(os.path.join(split["image_root"], "train_00003.jpg"))
    name = f"d2_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, split["json_file"], split["image_root"])
    with open(split["json_file"]) as f:
        x, y, w, h = json.load(f)["annotations"][0]["bbox"]
    report = check_dataset(name, progress=False)
    assert [(os.path.basename(p.image), p.message) for p in report.errors] == [
        ("train_00000.jpg", f"annotation 0: box reversed: y1 < y0 in [{x}, {y}, {w}, -4]"),
        ("train_00003.jpg", "image file not found"),
    ]
    assert len(report.records) == 2


@pytest.mark.slow
def test_image_faults_are_found_before_training_and_skipped_on_request(tmp_path, train_args, logged):
    info = _shapes(tmp_path)
    messages = logged("mutual_guide")
    images = info["splits"]["train"]["image_root"]
    os.remove(os.path.join(images, "train_00001.jpg"))
    with open(os.path.join(images, "train_00002.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    cv2.imwrite(os.path.join(images, "train_00003.jpg"), np.zeros((64, 128, 3), np.uint8))  # json says 128 x 128

    cfg = train_net.setup(train_args(info, tmp_path / "out", "SOLVER.MAX_ITER", 2))
    with pytest.raises(DatasetError) as err:
        train_net.Trainer(cfg)
    message = str(err.value)
    assert "1 usable image(s), 3 image(s) in error" in message
    assert re.search(r"train_00001.jpg: image file not found", message)
    assert re.search(r"train_00002.jpg: cannot read the image \(UnidentifiedImageError", message)
    assert "train_00003.jpg: the annotation gives 128 x 128 (width x height), the image is 128 x 64" in message
    assert "DATALOADER.SKIP_BAD_IMAGES True" in message
    assert not os.path.exists(tmp_path / "out" / "metrics.json")  # stopped before the first iteration
    assert os.listdir(tmp_path / "out" / "dataset_check") == [f"{info['custom_specs'][0].split(':')[0]}.txt"]

    cfg = train_net.setup(train_args(info, tmp_path / "skip", "SOLVER.MAX_ITER", 2, "DATALOADER.SKIP_BAD_IMAGES", True))
    assert [os.path.basename(d["file_name"]) for d in training_dataset_dicts(cfg)] == ["train_00000.jpg"]
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    log = "\n".join(messages)
    assert re.search(r"DATALOADER.SKIP_BAD_IMAGES: 3 image\(s\) of 'f\w+_train' left out for 3 error\(s\), 1 used", log)
    assert "train_00002.jpg: cannot read the image" in log
    assert os.path.isfile(tmp_path / "skip" / "model_final.pth")


@pytest.mark.slow
def test_voc_files_training_accepts_are_evaluated_too(tmp_path, write_voc, voc_object, train_args):
    # Float coordinates, no <pose>/<truncated>/<difficult>, .png images, a one-line split file, no <size>:
    # training reads them, and the evaluation at the end of training reads the same files.
    root = write_voc(tmp_path / "voc", {"only": [voc_object("square", (10.5, 12, 90.5, 100), pose=False,
                                                            truncated=False)]},
                     split="trainval", size=(128, 128), ext=".png", with_size=False)
    with open(os.path.join(root, "ImageSets", "Main", "trainval.txt")) as f:
        assert f.read() == "only"
    name = f"v{uuid.uuid4().hex[:8]}"
    spec = f"root={root};split=trainval;classes=circle,square,triangle;year=2007"
    info = {"custom_specs": [f"{name}_train:voc:{spec}", f"{name}_test:voc:{spec}"]}
    trainer = train_net.Trainer(train_net.setup(train_args(info, tmp_path / "out", "SOLVER.MAX_ITER", 1)))
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results["bbox"]  # one test set: detectron2 returns its results unwrapped
    assert set(results) == {"AP", "AP50", "AP75"} and all(0 <= v <= 100 for v in results.values())


# ----------------------------------------------------------------------------- no silent random weights
def test_eval_only_needs_weights_and_a_test_set(tmp_path, train_args):
    info = _shapes(tmp_path)
    with pytest.raises(ValueError, match=r"--eval-only without MODEL.WEIGHTS would run a randomly initialised "
                                         r"network\. Give the trained weights: MODEL.WEIGHTS path/to/model_final.pth"):
        train_net.main(train_args(info, tmp_path / "out", eval_only=True))
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match=r"--eval-only with an empty DATASETS.TEST: there is nothing to evaluate"):
        train_net.main(train_args(info, tmp_path / "out", "MODEL.WEIGHTS", weights, "DATASETS.TEST", "()",
                                  eval_only=True))
    with pytest.raises(ValueError, match=r"MODEL.WEIGHTS '.*absent.pth': file not found"):
        train_net.main(train_args(info, tmp_path / "out", "MODEL.WEIGHTS", tmp_path / "absent.pth", eval_only=True))


# ----------------------------------------------------------------------------- nothing overwritten
@pytest.mark.slow
def test_new_run_in_a_used_output_dir_is_refused(tmp_path, train_args):
    info = _shapes(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_final.pth").write_bytes(b"weights of an earlier run")
    (out / "metrics.json").write_text('{"iteration": 9}\n')
    expected = (r"OUTPUT_DIR '.*out' already holds a training run \(model_final.pth, metrics.json\)\. Add --resume to "
                r"continue it .*, set another OUTPUT_DIR for a new run, or add --overwrite-output-dir")
    with pytest.raises(FileExistsError, match=expected):
        train_net.setup(train_args(info, out))
    # detectron2's own parser has no --overwrite-output-dir: refused the same way
    plain = default_argument_parser().parse_args(["--config-file", os.path.join(ROOT, "configs", "demo_shapes.yaml"),
                                                  "OUTPUT_DIR", str(out)])
    with pytest.raises(FileExistsError, match=expected):
        train_net.main(plain)
    train_net.setup(train_args(info, out, resume=True))  # continuing it is allowed
    train_net.setup(train_args(info, out, "MODEL.WEIGHTS", out / "model_final.pth", eval_only=True))  # evaluating it
    assert (out / "metrics.json").read_text() == '{"iteration": 9}\n'

    train_net.setup(train_args(info, out, overwrite=True))
    kept = sorted(os.listdir(out))
    assert "metrics.json" not in kept and any(re.fullmatch(r"metrics\.json\.replaced-\d{8}-\d{6}", f) for f in kept)
    assert (out / "model_final.pth").read_bytes() == b"weights of an earlier run"  # replaced only when saved over


# ----------------------------------------------------------------------------- config errors
@pytest.mark.parametrize(
    "opts, message",
    [
        (("SOLVER.MAX_ITER", 0), "SOLVER.MAX_ITER must be a positive integer, got 0"),
        (("INPUT.SIZE", 0), r"INPUT.SIZE must be a positive multiple of 64 \(320, 512...\), got 0"),
        (("INPUT.SIZE", 100), "INPUT.SIZE must be a positive multiple of 64 .*, got 100"),
        (("SOLVER.IMS_PER_BATCH", 0), "SOLVER.IMS_PER_BATCH must be a positive integer, got 0"),
        (("DATASETS.TRAIN", "()"), r"DATASETS.TRAIN is empty: name the dataset\(s\) to train on"),
        (("DATASETS.TRAIN", "('nowhere',)"), "DATASETS.TRAIN names 'nowhere', which is not a registered dataset. "
                                              "This project's: mg_coco_2017_train"),
        (("MODEL.BACKBONE.NAME", "VGG19"), "MODEL.BACKBONE.NAME 'VGG19' is not a registered backbone; this project's: "
                                           "RepVGG, ResNet18, ShuffleNetV2, VGG16"),
        (("MODEL.NECK.NAME", "BiFPN"), "MODEL.NECK.NAME 'BiFPN' is not a registered neck; valid: FPN, PAFPN, RFB, SSD"),
        (("DATASETS.BOX_CONVENTION", "pascal"), r"DATASETS.BOX_CONVENTION must be one of \('detectron2', 'paper'\), "
                                                "got 'pascal'"),
    ],
)
def test_config_errors_name_the_key_and_value(tmp_path, train_args, opts, message):
    info = _shapes(tmp_path)
    with pytest.raises(ValueError, match=message):
        train_net.setup(train_args(info, tmp_path / "out", *opts))
    assert not os.path.exists(tmp_path / "out" / "metrics.json")


# ----------------------------------------------------------------------------- interrupted saves
# Run in a child process: train_net.main, with torch.save made to write the first bytes of the named
# checkpoint, flush them, and SIGKILL the process. The hook lives only in this test, and it does not depend
# on how the checkpointer writes: given a plain file, it would leave a truncated checkpoint under its name.
_KILLED_DURING_SAVE = """
import os, signal, sys
import torch
import train_net

save = torch.save

def save_then_die(obj, f, *args, **kwargs):
    name = getattr(f, "path", getattr(f, "name", f))
    if os.path.basename(str(name)) == os.environ["KILL_DURING_SAVE_OF"]:
        f.write(b"PK\\x03\\x04 the first bytes of a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return save(obj, f, *args, **kwargs)

torch.save = save_then_die
torch.set_num_threads(int(os.environ["NUM_THREADS"]))  # the parent's: float sums in the same order
train_net.main(train_net.argument_parser().parse_args(sys.argv[1:]))
"""


@pytest.mark.slow
def test_run_killed_during_a_checkpoint_save_resumes_to_the_same_weights(tmp_path, train_args):
    import subprocess
    import sys

    import torch

    # One training image and no augmentation: every batch is the same, before and after resuming (see
    # test_training.py's resume test for why).
    info = _shapes(tmp_path, num_train=1)
    opts = ("SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 2, "DATASETS.TEST", "()", "INPUT.SIZE", 64)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    train_net.main(train_args(info, straight, *opts))

    script = tmp_path / "killed.py"
    script.write_text(_KILLED_DURING_SAVE)
    env = dict(os.environ, KILL_DURING_SAVE_OF="model_0000003.pth", PYTHONPATH=ROOT,
               NUM_THREADS=str(torch.get_num_threads()))
    child = subprocess.run([sys.executable, str(script), *train_args(info, cut, *opts, as_argv=True)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == -9, child.stderr[-2000:]

    # Nothing truncated under a checkpoint's name: the save in progress is a temporary file only.
    files = sorted(os.listdir(cut))
    assert "model_0000003.pth" not in files and "model_0000001.pth" in files
    assert (cut / "last_checkpoint").read_text() == "model_0000001.pth"
    (partial,) = [f for f in files if re.fullmatch(r"\.model_0000003\.pth\.\w+\.tmp", f)]
    assert 0 < os.path.getsize(cut / partial) < os.path.getsize(cut / "model_0000001.pth")
    for name in files:
        if re.fullmatch(r"model_\d+\.pth", name):
            torch.load(cut / name, map_location="cpu", weights_only=False)

    train_net.main(train_args(info, cut, *opts, resume=True))
    assert not os.path.exists(cut / partial)  # the next run removes what the kill left
    a = torch.load(straight / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    b = torch.load(cut / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-4, f"resumed run ends {worst:.2e} away from the uninterrupted one"


def test_atomic_writes_replace_whole_files(tmp_path):
    from detectron2.utils.events import EventStorage

    from mutual_guide.utils.atomic_io import AtomicFile, AtomicJSONWriter

    target = tmp_path / "model_0000001.pth"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with AtomicFile(str(target), "wb") as f:
            f.write(b"new but partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model_0000001.pth"]
    with AtomicFile(str(target), "wb") as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["model_0000001.pth"]

    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"iteration": 3, "loss": 2.0}\n')
    before = os.stat(metrics).st_ino
    writer = AtomicJSONWriter(str(metrics))
    with EventStorage(7) as storage:
        storage.put_scalar("loss", 1.5, smoothing_hint=False)
        writer.write()
    assert metrics.read_text() == '{"iteration": 3, "loss": 2.0}\n{"iteration": 7, "loss": 1.5}\n'
    assert os.stat(metrics).st_ino != before  # a new file replaced the old one; nothing was appended in place


# ----------------------------------------------------------------------------- demo.py
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


# ----------------------------------------------------------------------------- tools/check_dataset.py
def test_check_dataset_tool_lists_every_problem(tmp_path, capsys, write_voc, voc_object, load_tool):
    tool = load_tool("check_dataset")

    root = write_voc(tmp_path, {
        "good": [voc_object("square", (2, 2, 30, 30))],
        "outside": [voc_object("circle", (40, 30, 70, 50))],  # the image is 64 x 48: a warning, clipped
        "reversed": [voc_object("circle", (30, 2, 10, 20))],
        "unlisted": [voc_object("hexagon", (2, 2, 9, 9))],
    })
    name = f"t{uuid.uuid4().hex[:8]}"
    argv = ["--config-file", os.path.join(ROOT, "configs", "demo_shapes.yaml"), "--no-progress",
            "DATASETS.CUSTOM", f"['{name}:voc:root={root};split=train;classes=circle,square,triangle']",
            "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()"]
    assert tool.main(argv) == 1
    out = capsys.readouterr().out
    assert f"Dataset '{name}': 2 usable image(s), 2 image(s) in error, 2 error(s), 2 warning(s)" in out
    assert f"class 'triangle' (class 2) has no object in dataset '{name}'" in out  # declared, never drawn
    assert "Annotations/reversed.xml: object 0 ('circle'): box reversed: xmin 30 > xmax 10" in out
    assert "Annotations/unlisted.xml: object 0 ('hexagon'): class 'hexagon' is not in classes=" in out
    assert ("warning: " in out and "Annotations/outside.xml: object 0 ('circle'): box (39, 29, 70, 50) reaches "
            "outside the 64 x 48 image; training clips it" in out)
    assert "with DATALOADER.SKIP_BAD_IMAGES True, 2 image(s) would be left out and 2 used" in out

    # The same dataset through DatasetCatalog (what a user's own code would call) refuses it, naming the files.
    from detectron2.data import DatasetCatalog

    with pytest.raises(DatasetError, match=r"(?s)2 error\(s\):.*reversed.xml.*unlisted.xml"):
        DatasetCatalog.get(name)
