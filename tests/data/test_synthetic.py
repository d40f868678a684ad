"""make_synthetic_dataset: the generated shapes dataset."""
import json

import numpy as np


from mutual_guide.data import make_synthetic_dataset


def test_synthetic_is_deterministic_and_learnable(tmp_path):
    a = make_synthetic_dataset(str(tmp_path / "a"), "coco", num_train=40, num_test=2, image_size=96, seed=1)
    b = make_synthetic_dataset(str(tmp_path / "b"), "coco", num_train=40, num_test=2, image_size=96, seed=1)
    c = make_synthetic_dataset(str(tmp_path / "c"), "coco", num_train=40, num_test=2, image_size=96, seed=2)
    load = lambda info: json.load(open(info["splits"]["train"]["json_file"]))  # noqa: E731
    assert load(a) == load(b) and load(a) != load(c)
    for i in (0, 17):
        name = f"train_{i:05d}.jpg"
        assert (tmp_path / "a" / "images" / name).read_bytes() == (tmp_path / "b" / "images" / name).read_bytes()

    data = load(a)
    per_image = np.bincount([ann["image_id"] for ann in data["annotations"]], minlength=41)[1:]
    assert per_image.max() <= 4 and (per_image == 0).any() and (per_image > 0).mean() > 0.8
    assert {ann["category_id"] for ann in data["annotations"]} == {1, 2, 3}
    sides = np.array([ann["bbox"][2:] for ann in data["annotations"]]) / 96
    assert sides.min() >= 0.09 and sides.max() <= 0.63
