"""tools/browse_dataset.py: a dataset drawn as loaded and as the training mapper gives it, class names from the
metadata, at least 512 pixels wide with labels smaller than their objects; on generated and on real VOC images."""
import os

import cv2
import numpy as np
import pytest
from conftest import ROOT

from detectron2.data import DatasetCatalog
from detectron2.utils.env import seed_all_rng

from mutual_guide.data import MutualGuideDatasetMapper, make_synthetic_dataset, register_custom_datasets
from mutual_guide.data.builtin import VOC_CLASS_NAMES

SHAPES_CONFIG = os.path.join(ROOT, "configs", "demo_shapes.yaml")
VOC_CONFIG = os.path.join(ROOT, "configs", "mg_shufflenet_ssd_voc.yaml")


@pytest.fixture(scope="module")
def browse(load_tool):
    return load_tool("browse_dataset").main


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("bshapes")
    info = make_synthetic_dataset(str(root), fmt="coco", num_train=4, num_test=1, image_size=128, seed=4,
                                  name="bshapes")
    return ["DATASETS.CUSTOM", str(info["custom_specs"]), "DATASETS.TRAIN", "('bshapes_train',)"]


def check_readable(call, image_path, min_width=512):
    height, width = cv2.imread(image_path).shape[:2]
    assert width >= min_width, image_path
    for (x0, y0, x1, y1), text_px in zip(call["boxes"], call["text_px"]):
        assert 10 <= text_px < y1 - y0, f"{image_path}: a {text_px:.0f}-pixel label on a {y1 - y0:.0f}-pixel box"
    return height, width


def test_generated_dataset_as_loaded(browse, shapes, drawn, tmp_path):
    written = browse(["--config-file", SHAPES_CONFIG, "--output", str(tmp_path), *shapes])
    records = DatasetCatalog.get("bshapes_train")
    assert [os.path.basename(p) for p in written] == [f"train_{i:05d}.jpg" for i in range(4)]
    assert sum(len(r["annotations"]) for r in records) > 0
    for record, call, path in zip(records, drawn, written):
        assert os.path.dirname(path) == str(tmp_path / "bshapes_train")
        assert call["labels"] == [("circle", "square", "triangle")[a["category_id"]] for a in record["annotations"]]
        assert check_readable(call, path) == (512, 512)  # 128 x 128 drawn 4x
        # each box outline is on the drawing, where the annotation puts it (4x its XYWH)
        image = cv2.imread(path).astype(int)
        plain = cv2.resize(cv2.imread(record["file_name"]), (512, 512), interpolation=cv2.INTER_NEAREST).astype(int)
        for a in record["annotations"]:
            x, y, w, _ = (round(v * 4) for v in a["bbox"])
            top_edge = np.abs(image[y, x + 4:x + w - 4] - plain[y, x + 4:x + w - 4]).sum(-1)
            assert (top_edge > 60).mean() > 0.5, (path, a["bbox"])


def test_generated_dataset_as_augmented_is_the_mappers_output(browse, shapes, drawn, tmp_path, make_cfg):
    shapes = shapes + ["INPUT.MG_AUGMENT", "True"]  # the demo's config trains without the paper's augmentation
    args = ["--config-file", SHAPES_CONFIG, "--augmented", "--seed", "3", *shapes]
    first = browse(["--output", str(tmp_path / "a")] + args)
    # what the training mapper gives for the same seed, image after image
    cfg = make_cfg(config_file=SHAPES_CONFIG, opts=shapes)
    register_custom_datasets(cfg)
    mapper = MutualGuideDatasetMapper(cfg, is_train=True)
    seed_all_rng(3)
    expected = [mapper(r)["instances"] for r in DatasetCatalog.get("bshapes_train")]
    for instances, call, path in zip(expected, drawn, first):
        assert call["labels"] == [("circle", "square", "triangle")[c] for c in instances.gt_classes.tolist()]
        np.testing.assert_allclose(call["boxes"], instances.gt_boxes.tensor.numpy() * 4, atol=1e-4)
        check_readable(call, path)

    again = browse(["--output", str(tmp_path / "b")] + args)
    other = browse(["--output", str(tmp_path / "c")] + args[:-len(shapes) - 1] + ["4", *shapes])
    read = lambda paths: [open(p, "rb").read() for p in paths]  # noqa: E731
    assert read(again) == read(first)  # the same seed, the same drawings
    assert read(other) != read(first)


def test_real_voc_images(browse, voc_mini_root, drawn, tmp_path):
    spec = f"vocmini:voc:root={voc_mini_root};split=trainval;classes={','.join(VOC_CLASS_NAMES)};year=2007"
    opts = ["DATASETS.CUSTOM", str([spec]), "DATASETS.TRAIN", "('vocmini',)"]
    loaded = browse(["--config-file", VOC_CONFIG, "--output", str(tmp_path / "loaded"), *opts])
    assert [sorted(c["labels"]) for c in drawn] == [["dog", "person"], ["train"]]
    assert [check_readable(c, p) for c, p in zip(drawn, loaded)] == [(725, 512), (764, 512)]  # 353 and 335 wide

    augmented = browse(["--config-file", VOC_CONFIG, "--output", str(tmp_path / "augmented"), "--augmented", *opts])
    for call, path in zip(drawn[2:], augmented):
        assert set(call["labels"]) <= {"dog", "person", "train"}
        assert check_readable(call, path) == (512, 512)  # INPUT.SIZE 320, drawn 1.6x


def test_drawings_are_not_written_over_earlier_ones_or_the_images(browse, shapes, tmp_path):
    first = browse(["--config-file", SHAPES_CONFIG, "--output", str(tmp_path), *shapes])
    with pytest.raises(SystemExit, match=r"--output: .*train_00000\.jpg.* already exist\(s\).* add --overwrite"):
        browse(["--config-file", SHAPES_CONFIG, "--output", str(tmp_path), *shapes])
    assert browse(["--config-file", SHAPES_CONFIG, "--output", str(tmp_path), "--overwrite", *shapes]) == first
