"""Atomic writes: a file is replaced whole or not at all, and a run killed during a checkpoint save resumes."""
import os
import re

import pytest
import train_net
from conftest import ROOT


# ----------------------------------------------------------------------------- interrupted saves
# Run in a child process: train_net.main, with torch.save made to write the first bytes of the named
# checkpoint, flush them, and SIGKILL the process. The hook lives only in this test, and it does not depend
# on how the checkpointer writes: given a plain file, it would leave a truncated checkpoint under its name.
_KILLED_DURING_SAVE = """
import os, signal, sys
import torch
import train_net

save = torch.save


def save_then_die(obj, f, *args, **kwargs):
    name = getattr(f, "path", getattr(f, "name", f))
    if os.path.basename(str(name)) == os.environ["KILL_DURING_SAVE_OF"]:
        f.write(b"PK\\x03\\x04 the first bytes of a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return save(obj, f, *args, **kwargs)

torch.save = save_then_die
torch.set_num_threads(int(os.environ["NUM_THREADS"]))  # the parent's: float sums in the same order
train_net.main(train_net.argument_parser().parse_args(sys.argv[1:]))
"""


@pytest.mark.slow
def test_run_killed_during_a_checkpoint_save_resumes_to_the_same_weights(tmp_path, train_args, shapes_dataset):
    import subprocess
    import sys

    import torch

    # One training image and no augmentation: every batch is the same, before and after resuming (see
    # test_training.py's resume test for why).
    info = shapes_dataset(tmp_path, num_train=1)
    opts = ("SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 2, "DATASETS.TEST", "()", "INPUT.SIZE", 64)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    train_net.main(train_args(info, straight, *opts))

    script = tmp_path / "killed.py"
    script.write_text(_KILLED_DURING_SAVE)
    env = dict(os.environ, KILL_DURING_SAVE_OF="model_0000003.pth", PYTHONPATH=ROOT,
               NUM_THREADS=str(torch.get_num_threads()))
    child = subprocess.run([sys.executable, str(script), *train_args(info, cut, *opts, as_argv=True)], env=env,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == -9, child.stderr[-2000:]

    # Nothing truncated under a checkpoint's name: the save in progress is a temporary file only.
    files = sorted(os.listdir(cut))
    assert "model_0000003.pth" not in files and "model_0000001.pth" in files
    assert (cut / "last_checkpoint").read_text() == "model_0000001.pth"
    (partial,) = [f for f in files if re.fullmatch(r"\.model_0000003\.pth\.\w+\.tmp", f)]
    assert 0 < os.path.getsize(cut / partial) < os.path.getsize(cut / "model_0000001.pth")
    for name in files:
        if re.fullmatch(r"model_\d+\.pth", name):
            torch.load(cut / name, map_location="cpu", weights_only=False)

    train_net.main(train_args(info, cut, *opts, resume=True))
    assert not os.path.exists(cut / partial)  # the next run removes what the kill left
    a = torch.load(straight / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    b = torch.load(cut / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
    assert worst < 1e-4, f"resumed run ends {worst:.2e} away from the uninterrupted one"


def test_atomic_writes_replace_whole_files(tmp_path):
    from mutual_guide.utils.atomic_io import AtomicFile

    target = tmp_path / "model_0000001.pth"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with AtomicFile(str(target), "wb") as f:
            f.write(b"new but partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model_0000001.pth"]
    with AtomicFile(str(target), "wb") as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["model_0000001.pth"]
