"""
The checks train_net makes before it starts: the config's values, the output folder, the weights and test set
of --eval-only, and the images of the training set. Small: 128 px, a handful of iterations.
"""
import os
import re

import cv2
import numpy as np
import pytest
import train_net
from conftest import ROOT

from detectron2.engine import default_argument_parser

from mutual_guide.data.loading import training_dataset_dicts
from mutual_guide.data.problems import DatasetError


@pytest.mark.slow
def test_image_faults_are_found_before_training_and_skipped_on_request(tmp_path, train_args, logged, shapes_dataset):
    info = shapes_dataset(tmp_path)
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


# ----------------------------------------------------------------------------- no silent random weights
def test_eval_only_needs_weights_and_a_test_set(tmp_path, train_args, shapes_dataset):
    info = shapes_dataset(tmp_path)
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
def test_new_run_in_a_used_output_dir_is_refused(tmp_path, train_args, shapes_dataset):
    info = shapes_dataset(tmp_path)
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
                                           "CSPDarknet, RepVGG, RepVGG2023, ResNet18, ResNet2023, ShuffleNetV2, "
                                           "ShuffleNetV2_2023, VGG16"),
        (("MODEL.NECK.NAME", "BiFPN"), "MODEL.NECK.NAME 'BiFPN' is not a registered neck; valid: FPN, FPN2023, PAFPN, "
                                         "PAFPN2023, RFB, SSD, SSD2023"),
        (("DATASETS.BOX_CONVENTION", "pascal"), r"DATASETS.BOX_CONVENTION must be one of \('detectron2', 'paper'\), "
                                                "got 'pascal'"),
        (("SOLVER.BASE_LR", -0.1), r"SOLVER.BASE_LR must be a positive number, got -0.1"),
        (("SOLVER.MOMENTUM", 1.5), r"SOLVER.MOMENTUM must be in \[0, 1\), got 1.5"),
        (("SOLVER.WEIGHT_DECAY", -1e-4), r"SOLVER.WEIGHT_DECAY must be 0 or positive, got -0.0001"),
        (("SOLVER.BASE_LR_END", 0.5), r"SOLVER.BASE_LR_END \(0.5\) must not exceed SOLVER.BASE_LR"),
        (("SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", "(30, 20)"),
         r"SOLVER.STEPS must be increasing positive iterations, got \(30, 20\)"),
        (("MODEL.MUTUAL_GUIDE.NMS_THRESH_TEST", 0.0), r"MODEL.MUTUAL_GUIDE.NMS_THRESH_TEST must be in \(0, 1\], got 0.0"),
        (("MODEL.MUTUAL_GUIDE.NUM_CLASSES", 0), "MODEL.MUTUAL_GUIDE.NUM_CLASSES must be a positive integer, got 0"),
    ],
)

def test_config_errors_name_the_key_and_value(tmp_path, train_args, opts, message, shapes_dataset):
    info = shapes_dataset(tmp_path)
    with pytest.raises(ValueError, match=message):
        train_net.setup(train_args(info, tmp_path / "out", *opts))
    assert not os.path.exists(tmp_path / "out" / "metrics.json")
