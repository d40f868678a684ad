"""An evaluation in a training folder, or a run that overwrites one, leaves the earlier run's config.yaml readable."""
import os
import re
import uuid

import train_net
from mutual_guide.data import make_synthetic_dataset


def _shapes(root):
    return make_synthetic_dataset(str(root), "coco", num_train=2, num_test=2, image_size=64, seed=0,
                                  name=f"kept{uuid.uuid4().hex[:8]}")


def _training_folder(out):
    out.mkdir()
    (out / "config.yaml").write_text("# the training run's config\n")
    (out / "model_final.pth").write_bytes(b"weights")
    (out / "metrics.json").write_text('{"iteration": 9}\n')


def test_eval_only_keeps_the_training_runs_config_and_reports(tmp_path, train_args):
    info = _shapes(tmp_path / "data")
    out = tmp_path / "out"
    _training_folder(out)
    (out / "eval" / "shapes_test").mkdir(parents=True)
    (out / "eval" / "shapes_test" / "per_class.json").write_text("the training run's final evaluation")
    cfg = train_net.setup(train_args(info, out, "MODEL.WEIGHTS", out / "model_final.pth", eval_only=True))
    assert (out / "config.yaml").read_text() == "# the training run's config\n"
    assert "MODEL:" in (out / "config_eval.yaml").read_text()  # the evaluation's own config, beside it
    assert not any(name.endswith(".before-eval") for name in os.listdir(out))
    assert cfg.MODEL.WEIGHTS == str(out / "model_final.pth")
    kept = [n for n in os.listdir(out) if re.fullmatch(r"eval\.replaced-\d{8}-\d{6}", n)]
    assert len(kept) == 1 and not (out / "eval").exists()
    assert (out / kept[0] / "shapes_test" / "per_class.json").read_text() == "the training run's final evaluation"


def test_overwrite_output_dir_sets_the_old_config_aside(tmp_path, train_args):
    info = _shapes(tmp_path / "data")
    out = tmp_path / "out"
    _training_folder(out)
    train_net.setup(train_args(info, out, overwrite=True))
    names = os.listdir(out)
    replaced = [n for n in names if re.fullmatch(r"config\.yaml\.replaced-\d{8}-\d{6}", n)]
    assert len(replaced) == 1, names
    assert (out / replaced[0]).read_text() == "# the training run's config\n"
    assert "MODEL:" in (out / "config.yaml").read_text()  # the new run's
