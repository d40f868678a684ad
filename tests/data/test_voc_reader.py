"""Our VOC reader on hand-made files and on the real VOC images: what the format allows, broken files named."""
import re

import pytest

from detectron2.structures import BoxMode

from mutual_guide.data.voc_reader import read_voc_dataset

CLASSES = ("cat", "dog", "bird")


def test_voc_reader_accepts_what_the_format_allows(tmp_path, write_voc, voc_object):
    root = write_voc(tmp_path, {
        # float coordinates, no <pose>/<truncated>/<difficult>, a .png image, no <size>
        "a": [voc_object("cat", (10.5, 20, 30.5, 40), pose=False, truncated=False),
              voc_object("dog", (1, 1, 64, 48), difficult=1)],
    }, size=(64, 48), ext=".png", with_size=False)
    records, problems = read_voc_dataset(root, "train", CLASSES)
    assert problems == []
    (r,) = records
    assert r["file_name"].endswith("JPEGImages/a.png") and (r["width"], r["height"], r["image_id"]) == (64, 48, "a")
    assert [a["bbox"] for a in r["annotations"]] == [[9.5, 19.0, 30.5, 40.0], [0.0, 0.0, 64.0, 48.0]]
    assert [(a["category_id"], a["difficult"]) for a in r["annotations"]] == [(0, 0), (1, 1)]
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in r["annotations"])


_BROKEN_XML = {  # case -> (objects of image "a", or a whole XML text; the message expected, None: no problem)
    "malformed": ("<annotation><object><name>cat</name>", r"malformed XML: .*line 1"),
    "no bndbox": (["<object><name>cat</name></object>"], r"object 0 \('cat'\) has no <bndbox>"),
    "no name": (["<object><bndbox><xmin>1</xmin></bndbox></object>"], "object 0 has no <name>"),
    "unknown class": ([("horse", (1, 1, 5, 5))], r"class 'horse' is not in classes= \(cat, dog, bird\)"),
    "not a number": ([("cat", (1, 1, "4O", 5))], r"<xmax> '4O' \(missing or not a number\)"),
    "reversed": ([("dog", (30, 2, 10, 20))], "box reversed: xmin 30 > xmax 10"),
    "outside": ([("dog", (100, 100, 120, 120))], r"box \(99, 99, 120, 120\) lies entirely outside the 64 x 48 image"),
    "no object": ([], None),  # an image without objects is fine
}


@pytest.mark.parametrize("case", sorted(_BROKEN_XML))
def test_voc_reader_errors_name_the_file(tmp_path, write_voc, voc_object, case):
    objects, expected = _BROKEN_XML[case]
    if not isinstance(objects, str):
        objects = [o if isinstance(o, str) else voc_object(*o) for o in objects]
    root = write_voc(tmp_path, {"a": objects, "b": [voc_object("cat", (2, 2, 9, 9))]})
    records, problems = read_voc_dataset(root, "train", CLASSES)
    if expected is None:
        assert problems == [] and len(records) == 2
        return
    (problem,) = problems
    assert problem.path.endswith("Annotations/a.xml") and problem.error and problem.image.endswith("JPEGImages/a.jpg")
    assert str(problem).startswith(f"error: {problem.path}: ")
    assert re.search(expected, problem.message), problem.message
    assert [r["image_id"] for r in records] == ["b"]  # the image in error has no record, the other is read


def test_voc_reader_missing_files_and_split(tmp_path, write_voc, voc_object):
    root = write_voc(tmp_path, {"a": [voc_object("cat", (1, 1, 5, 5))], "b": [voc_object("cat", (1, 1, 5, 5))]})
    (tmp_path / "JPEGImages" / "a.jpg").unlink()
    (tmp_path / "Annotations" / "b.xml").unlink()
    records, problems = read_voc_dataset(root, "train", CLASSES)
    assert records == []
    messages = sorted(str(p) for p in problems)
    assert "Annotations/b.xml: annotation file of image id 'b' (listed in the split file) not found" in messages[0]
    assert "JPEGImages/a.jpg: image of id 'a' not found" in messages[1]
    _, problems = read_voc_dataset(root, "val", CLASSES)
    assert problems[0].fatal and "ImageSets/Main/val.txt: cannot read the split file" in str(problems[0])


def test_voc_reader_gives_load_voc_instances_records_on_real_voc(voc_mini_root):
    from detectron2.data.datasets.pascal_voc import CLASS_NAMES, load_voc_instances

    ours, problems = read_voc_dataset(voc_mini_root, "trainval", CLASS_NAMES)
    assert problems == []
    theirs = load_voc_instances(voc_mini_root, "trainval", CLASS_NAMES)
    for a in ours:
        assert [ann.pop("difficult") for ann in a["annotations"]] == [0] * len(a["annotations"])
    assert ours == theirs
