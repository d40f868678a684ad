"""The builtin VOC and COCO datasets: registered lazily, a missing folder named."""
import os

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog

from mutual_guide.data import check_dataset_paths


def test_builtin_datasets_registered_lazily_and_missing_folder_named(tmp_path, monkeypatch):
    builtin = ["mg_voc_2007_trainval", "mg_voc_2012_trainval", "mg_voc_2007_test", "mg_coco_2017_train"]
    assert set(builtin + ["mg_coco_2017_val"]) <= set(DatasetCatalog.list())
    meta = MetadataCatalog.get("mg_voc_2007_test")
    assert (meta.year, meta.split, meta.evaluator_type) == (2007, "test", "pascal_voc")
    assert MetadataCatalog.get("mg_coco_2017_val").evaluator_type == "coco"
    if os.path.isabs(meta.dirname):
        pytest.skip("DETECTRON2_DATASETS is absolute here; the relative default cannot be made to miss")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit/VOC2007.*DETECTRON2_DATASETS"):
        DatasetCatalog.get("mg_voc_2007_test")
    with pytest.raises(FileNotFoundError, match=r"instances_val2017\.json"):
        check_dataset_paths(["mg_coco_2017_val"])
