"""DATASETS.CUSTOM: specs of COCO and VOC folders, registered and read."""
import os

import numpy as np
import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from mutual_guide.data import MutualGuideDatasetMapper, make_synthetic_dataset, register_custom_datasets
from mutual_guide.data.builtin import VOC_CLASS_NAMES
from mutual_guide.data.custom import parse_custom_spec


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    kwargs = dict(num_train=24, num_test=6, image_size=96, seed=0)
    return {
        "coco": make_synthetic_dataset(str(root / "coco"), "coco", **kwargs),
        "voc": make_synthetic_dataset(str(root / "voc"), "voc", **kwargs),
    }


# ----------------------------------------------------------------------------- real VOC images
def test_voc_mini_through_custom_spec_and_mapper(voc_mini_root, make_cfg, unique_name):
    name = unique_name("voc_mini")
    spec = f"{name}:voc:root={voc_mini_root};split=trainval;classes={','.join(VOC_CLASS_NAMES)};year=2007"
    register_custom_datasets(make_cfg(opts=["DATASETS.CUSTOM", [spec]]))
    meta = MetadataCatalog.get(name)
    assert (meta.year, meta.split, meta.evaluator_type, len(meta.thing_classes)) == (2007, "trainval", "pascal_voc", 20)
    dicts = {d["image_id"]: d for d in DatasetCatalog.get(name)}
    assert sorted(dicts) == ["000001", "000002"]
    first = dicts["000001"]
    assert (first["height"], first["width"]) == (500, 353)
    assert [a["category_id"] for a in first["annotations"]] == [11, 14]  # dog, person
    np.testing.assert_array_equal([a["bbox"] for a in first["annotations"]], [[47, 239, 195, 371], [7, 11, 352, 498]])
    assert [a["bbox"] for a in dicts["000002"]["annotations"]] == [[138, 199, 207, 301]]  # train

    out = MutualGuideDatasetMapper(make_cfg(size=320, opts=["INPUT.MG_AUGMENT", False]), is_train=True)(first)
    assert out["image"].shape == (3, 320, 320) and (out["height"], out["width"]) == (500, 353)
    np.testing.assert_allclose(
        out["instances"].gt_boxes.tensor[0],
        [47 * 320 / 353, 239 * 320 / 500, 195 * 320 / 353, 371 * 320 / 500],
        rtol=1e-5,
    )
    np.random.seed(0)
    for d in dicts.values():
        inst = MutualGuideDatasetMapper(make_cfg(size=320), is_train=True)(d)["instances"]
        assert len(inst) >= 1 and (inst.gt_boxes.tensor <= 320).all()


# ----------------------------------------------------------------------------- custom registration
def test_custom_coco_and_voc_specs_load_the_same_synthetic_data(synthetic, make_cfg, unique_name):
    names = {fmt: unique_name(f"syn_{fmt}") for fmt in ("coco", "voc")}
    specs = [synthetic[fmt]["custom_specs"][0].replace("synthetic_train", names[fmt]) for fmt in ("coco", "voc")]
    cfg = make_cfg(opts=["DATASETS.CUSTOM", specs])
    assert register_custom_datasets(cfg) == [names["coco"], names["voc"]]
    assert register_custom_datasets(cfg) == [names["coco"], names["voc"]]  # idempotent

    coco = sorted(DatasetCatalog.get(names["coco"]), key=lambda d: d["file_name"])
    voc = sorted(DatasetCatalog.get(names["voc"]), key=lambda d: d["file_name"])
    assert len(coco) == len(voc) == 24
    assert MetadataCatalog.get(names["coco"]).thing_classes == ["circle", "square", "triangle"]
    assert MetadataCatalog.get(names["coco"]).evaluator_type == "coco"
    assert MetadataCatalog.get(names["voc"]).thing_classes == ["circle", "square", "triangle"]
    assert MetadataCatalog.get(names["voc"]).year == 2012
    for c, v in zip(coco, voc):
        assert os.path.basename(c["file_name"]) == os.path.basename(v["file_name"])
        c_boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in c["annotations"]]
        v_boxes = [a["bbox"] for a in v["annotations"]]
        np.testing.assert_allclose(np.array(c_boxes).reshape(-1, 4), np.array(v_boxes).reshape(-1, 4))
        assert [a["category_id"] for a in c["annotations"]] == [a["category_id"] for a in v["annotations"]]


def test_custom_same_name_other_spec_is_refused(synthetic, make_cfg, unique_name):
    name = unique_name("syn")
    spec = synthetic["coco"]["custom_specs"][0].replace("synthetic_train", name)
    register_custom_datasets(make_cfg(opts=["DATASETS.CUSTOM", [spec]]))
    with pytest.raises(ValueError, match="already registered"):
        register_custom_datasets(make_cfg(opts=["DATASETS.CUSTOM", [spec.replace("train.json", "test.json")]]))


@pytest.mark.parametrize(
    "entry",
    [
        "no_format_here",
        "x:yolo:root=/a",
        ":voc:root=/a;split=train;classes=a",
        "x:voc:root=/a;split=train",  # no classes
        "x:voc:root=/a;split=train;classes=a;colour=red",  # unknown key
        "x:voc:root=/a;split;classes=a",  # not key=value
        "x:voc:root=/a;split=train;classes=a,,b",
        "x:voc:root=/a;split=train;classes=a;year=twenty",
        "x:coco:json=/a.json",  # no images
    ],
)


def test_malformed_spec_names_the_entry(entry):
    with pytest.raises(ValueError) as err:
        parse_custom_spec(entry)
    assert repr(entry) in str(err.value) and "expected" in str(err.value)


def test_parse_spec():
    name, fmt, opts = parse_custom_spec("d:voc:root=/r; split=val ;classes=cat, dog;year=2007")
    assert (name, fmt, opts) == ("d", "voc", {"root": "/r", "split": "val", "classes": ["cat", "dog"], "year": 2007})


def test_missing_paths_name_the_key_and_path(tmp_path, synthetic, make_cfg, unique_name):
    def register(spec):
        register_custom_datasets(make_cfg(opts=["DATASETS.CUSTOM", [f"{unique_name('m')}:{spec}"]]))

    missing = str(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=f"root=.*{missing}"):
        register(f"voc:root={missing};split=train;classes=a")
    voc_root = synthetic["voc"]["root"]
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/val\.txt"):
        register(f"voc:root={voc_root};split=val;classes=a")
    json_file = synthetic["coco"]["splits"]["train"]["json_file"]
    with pytest.raises(FileNotFoundError, match=f"images=.*{missing}"):
        register(f"coco:json={json_file};images={missing}")
