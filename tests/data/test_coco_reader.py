"""Our COCO reader against detectron2's load_coco_json."""
from mutual_guide.data.coco_reader import read_coco_dataset


def test_coco_reader_gives_load_coco_jsons_records(tmp_path, unique_name, write_coco):
    from detectron2.data.datasets.coco import load_coco_json

    data = {
        "images": [{"id": 7, "file_name": "1.jpg", "width": 32, "height": 40},
                   {"id": 3, "file_name": "0.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 3, "category_id": 5, "bbox": [1, 2, 10, 20], "iscrowd": 0, "area": 200},
                        {"id": 2, "image_id": 7, "category_id": 2, "bbox": [0.5, 0, 4, 4], "iscrowd": 1}],
        "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
    }
    json_file, images = write_coco(tmp_path, data, sizes=((64, 48), (32, 40)))
    records, problems, meta = read_coco_dataset(json_file, images)
    assert problems == []
    assert meta == {"thing_classes": ["cat", "dog"], "thing_dataset_id_to_contiguous_id": {2: 0, 5: 1}}
    reference = load_coco_json(json_file, images, unique_name("ref"))
    assert [r["image_id"] for r in records] == [r["image_id"] for r in reference] == [3, 7]
    for ours, theirs in zip(records, reference):
        assert {k: ours[k] for k in ("file_name", "height", "width")} == {k: theirs[k] for k in ("file_name", "height", "width")}
        for a, b in zip(ours["annotations"], theirs["annotations"]):
            assert (a["bbox"], a["category_id"], a["iscrowd"], a["bbox_mode"]) == (
                b["bbox"], b["category_id"], b["iscrowd"], b["bbox_mode"])
