"""The dataset check on the `nasty_dataset` fixture: every fault in it is reported, naming its file or dataset."""
import os
import uuid

import pytest

from detectron2.config import get_cfg

from mutual_guide import add_mutual_guide_config
from mutual_guide.data.check import check_dataset
from mutual_guide.data.custom import register_custom_dataset
from mutual_guide.data.loading import check_datasets
from mutual_guide.data.problems import DatasetError


def test_every_fault_is_reported_with_its_file(nasty_dataset, tmp_path):
    tag = uuid.uuid4().hex[:8]
    voc, coco = f"nasty_voc_{tag}", f"nasty_coco_{tag}"
    register_custom_dataset(f"{voc}:voc:root={nasty_dataset['voc_root']};split=train;"
                            f"classes={nasty_dataset['voc_classes']}")
    register_custom_dataset(f"{coco}:coco:json={nasty_dataset['json_file']};images={nasty_dataset['image_root']}")
    files = nasty_dataset["files"]
    split_file = os.path.join(nasty_dataset["voc_root"], "ImageSets", "Main", "train.txt")

    report = {name: [str(p) for p in check_dataset(name, progress=False).problems] for name in (voc, coco)}
    for name in (voc, coco):
        lines = report[name]

        def found(start, contains):
            return any(line.startswith(start) and contains in line for line in lines)

        assert found(f"error: {files['truncated']}: truncated: cannot decode the image", "image file is truncated")
        assert found(f"warning: {files['sixteen_bit']}: 16-bit samples: scaled to 8 bits", "")
        assert found(f"warning: {files['alpha']}: alpha channel (RGBA): dropped", "")
        assert found(f"warning: {files['rotated']}: EXIF orientation 6", "must give the rotated size, 48 x 64")
        assert found(f"error: {files['rotated']}: the annotation gives 64 x 48 (width x height), the image is "
                     "48 x 64", "")
        source = split_file if name == voc else nasty_dataset["json_file"]
        assert found(f"warning: {source}: class 'triangle' (class 2) has no object in dataset '{name}'", "")
        assert not any(files["good"] in line for line in lines)
        assert len(lines) == 6, lines

    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (voc,), (coco,)
    # before training: the images in error first, naming them...
    with pytest.raises(DatasetError, match=rf"(?s)Dataset '{voc}': 3 usable image\(s\), 2 image\(s\) in error.*"
                                           r"truncated\.jpg: truncated.*rotated\.jpg: the annotation gives"):
        check_datasets(cfg, [voc, coco])
    # ... and with them left out, the class lists, naming both datasets and both lists
    cfg.DATALOADER.SKIP_BAD_IMAGES = True
    with pytest.raises(DatasetError, match=rf"(?s)Datasets '{voc}' and '{coco}' list the same classes in another "
                                           r"order.*\['circle', 'square', 'triangle'\].*"
                                           r"\['square', 'circle', 'triangle'\]"):
        check_datasets(cfg, [voc, coco])
