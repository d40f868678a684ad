"""metrics.json grows by whole lines: appended in place, a torn last line of an interrupted write cut on reopening."""
import json
import os

from detectron2.utils.events import EventStorage

from mutual_guide.utils.atomic_io import AtomicJSONWriter


def _write(path, iteration, loss):
    writer = AtomicJSONWriter(str(path))
    with EventStorage(iteration) as storage:
        storage.put_scalar("loss", loss, smoothing_hint=False)
        writer.write()
    writer.close()


def test_lines_are_appended_in_place(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"iteration": 3, "loss": 2.0}\n')
    inode = os.stat(metrics).st_ino
    _write(metrics, 7, 1.5)
    _write(metrics, 9, 1.25)
    assert metrics.read_text() == (
        '{"iteration": 3, "loss": 2.0}\n{"iteration": 7, "loss": 1.5}\n{"iteration": 9, "loss": 1.25}\n'
    )
    assert os.stat(metrics).st_ino == inode  # the same file, grown: no rewrite of what was there


def test_a_torn_last_line_is_cut_before_appending(tmp_path):
    metrics = tmp_path / "metrics.json"
    # a kill in the middle of a write: half a record after the last complete line
    metrics.write_text('{"iteration": 3, "loss": 2.0}\n{"iteration": 4, "lo')
    _write(metrics, 5, 1.0)
    lines = metrics.read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [3, 5]


def test_a_file_that_is_one_torn_line_is_emptied(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"iteration": 1, "lo')
    _write(metrics, 2, 0.5)
    assert metrics.read_text() == '{"iteration": 2, "loss": 0.5}\n'
