#!/usr/bin/env python
"""
Check the datasets a config uses, as train_net.py does before its first iteration, and list every problem.

    python tools/check_dataset.py --config-file configs/mg_resnet18_fpn_voc.yaml [--datasets NAME ...] [KEY VALUE ...]

Every annotation file is parsed and every image header read once. Each problem names its file: errors
(missing or unreadable image, size differing from the annotation, malformed XML or JSON, unknown class,
reversed box, box entirely outside its image, duplicated image id or file name, missing "annotations" or
"categories", annotation without "bbox"...) stop a training run unless DATALOADER.SKIP_BAD_IMAGES True,
which leaves those images out; warnings (a box reaching outside its image, an empty box) do not.
Exit status: 0 when no dataset has an error, 1 otherwise.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from detectron2.config import get_cfg  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from mutual_guide import add_mutual_guide_config  # noqa: E402
from mutual_guide.data import check_dataset_paths, register_custom_datasets  # noqa: E402
from mutual_guide.data.check import check_dataset  # noqa: E402
from mutual_guide.data.loading import check_class_lists  # noqa: E402
from mutual_guide.data.problems import DatasetError  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--datasets", nargs="+", help="names to check (default: DATASETS.TRAIN and DATASETS.TEST)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger(name="mutual_guide")
    cfg = get_cfg()
    add_mutual_guide_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    register_custom_datasets(cfg)
    names = args.datasets or list(dict.fromkeys(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)))
    if not names:
        parser.error("no dataset to check: DATASETS.TRAIN and DATASETS.TEST are empty and --datasets is not given")
    check_dataset_paths(names)

    failed = []
    for name in names:
        started = time.perf_counter()
        report = check_dataset(name, progress=not args.no_progress, full_decode=cfg.DATALOADER.CHECK_FULL_DECODE)
        seconds = time.perf_counter() - started
        print(report.text(limit=None))
        print(f"[check_dataset] {name}: checked in {seconds:.1f} s")
        if report.errors:
            failed.append(name)
            if report.fatal:
                print(f"[check_dataset] {name} cannot be used at all (see the errors above)")
            else:
                print(f"[check_dataset] with DATALOADER.SKIP_BAD_IMAGES True, {len(report.bad_images)} image(s) "
                      f"would be left out and {len(report.records)} used")
    print(f"[check_dataset] {len(names) - len(failed)} of {len(names)} dataset(s) without errors"
          + (f"; errors in: {', '.join(failed)}" if failed else ""))
    try:  # the model's class k must be the k-th class of every dataset
        roles = {n: "DATASETS.TRAIN" if n in cfg.DATASETS.TRAIN else "DATASETS.TEST" for n in names}
        check_class_lists([n for n in names if n not in failed], roles)
    except DatasetError as e:
        print(f"[check_dataset] {e}")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
