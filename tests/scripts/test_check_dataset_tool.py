"""tools/check_dataset.py: every problem of a dataset listed in one run."""
import os
import uuid

import pytest
from conftest import ROOT


from mutual_guide.data.problems import DatasetError


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
