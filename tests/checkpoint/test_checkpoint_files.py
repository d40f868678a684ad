"""Files that are not checkpoints, a broken last_checkpoint, and --resume beside MODEL.WEIGHTS: each named clearly."""
import pytest
import torch

from detectron2.modeling import build_model

from mutual_guide.checkpoint import MutualGuideCheckpointer


@pytest.fixture
def model(make_cfg):
    return build_model(make_cfg(size=64, num_classes=3))


def test_a_text_file_is_not_a_checkpoint(model, tmp_path):
    text = tmp_path / "weights.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(ValueError, match=r"Cannot read '.*weights\.pth' as a checkpoint \(.*\)\. MODEL.WEIGHTS must "
                                         r"be a file saved by torch.save"):
        MutualGuideCheckpointer(model).load(str(text))


def test_a_pickle_without_tensors_is_refused(model, tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match=r"holds no state dict"):
        MutualGuideCheckpointer(model).load(str(path))


@pytest.mark.parametrize("content, message", [
    (b"", r"last_checkpoint should hold the file name of the last checkpoint .* but it is empty"),
    (b"\x80\x02\xff\x00binary", r"last_checkpoint should hold .* but it holds b'\\x80\\x02\\xff\\x00binary'"),
    (b"model_0000009.pth\n", r"last_checkpoint names 'model_0000009.pth', which is not a file of"),
])
def test_a_broken_last_checkpoint_is_named(model, tmp_path, content, message):
    (tmp_path / "last_checkpoint").write_bytes(content)
    checkpointer = MutualGuideCheckpointer(model, str(tmp_path))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        checkpointer.resume_or_load("", resume=True)


def test_resume_beside_model_weights_says_which_is_loaded_before_loading(model, tmp_path, logged):
    (tmp_path / "run").mkdir()
    checkpointer = MutualGuideCheckpointer(model, str(tmp_path / "run"))
    checkpointer.save("model_0000004")
    other = tmp_path / "other.pth"
    torch.save({"model": model.state_dict()}, other)
    messages = logged("mutual_guide.checkpoint.checkpointer")
    checkpointer.resume_or_load(str(other), resume=True)
    said = "\n".join(messages)
    assert f"--resume and MODEL.WEIGHTS '{other}': loading '{tmp_path / 'run' / 'model_0000004.pth'}'" in said
    messages.clear()
    checkpointer.resume_or_load(str(tmp_path / "run" / "model_0000004.pth"), resume=True)  # the same file: no warning
    assert not any("--resume and MODEL.WEIGHTS" in m for m in messages)
