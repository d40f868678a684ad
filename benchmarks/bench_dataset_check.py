"""
How long the dataset check (mutual_guide/data/check.py: every annotation parsed, every image header and end read)
takes, on generated VOC and COCO datasets, timed side by side with decoding the same images (what the check avoids)
and with the check of DATALOADER.CHECK_FULL_DECODE True. Prints the seconds per 10,000 images, how many times
cheaper than decoding the check is, and what reading each file's end (the truncation check) adds to reading its
header alone.

    .venv/bin/python benchmarks/bench_dataset_check.py [--images 10000] [--size 128] [--keep DIR]
"""
import argparse
import os
import shutil
import tempfile
import time
import uuid

import cv2

from detectron2.config import get_cfg

from mutual_guide import add_mutual_guide_config
from mutual_guide.data import make_synthetic_dataset, register_custom_datasets
from mutual_guide.data.check import check_dataset
from mutual_guide.data.image_header import read_image_size
from mutual_guide.data.image_io import inspect_image


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--size", type=int, default=128, help="side of the generated images")
    parser.add_argument("--keep", help="write the datasets here and keep them (default: a temporary folder)")
    args = parser.parse_args()
    root = args.keep or tempfile.mkdtemp(prefix="bench_check_")
    try:
        for fmt in ("voc", "coco"):
            started = time.perf_counter()
            info = make_synthetic_dataset(os.path.join(root, fmt), fmt, num_train=args.images, num_test=1,
                                          image_size=args.size, seed=0, name=f"bench_{fmt}_{uuid.uuid4().hex[:6]}")
            print(f"[{fmt}] {args.images} images of {args.size} px written in {time.perf_counter() - started:.0f} s")
            cfg = get_cfg()
            add_mutual_guide_config(cfg)
            cfg.DATASETS.CUSTOM = info["custom_specs"][:1]
            (name,) = register_custom_datasets(cfg)

            started = time.perf_counter()
            report = check_dataset(name, progress=False)
            check = time.perf_counter() - started
            assert not report.problems, report.text(5)
            started = time.perf_counter()
            for record in report.records:
                cv2.imread(record["file_name"], cv2.IMREAD_COLOR)
            decode = time.perf_counter() - started
            per_10k = check * 10000 / len(report.records)
            print(f"[{fmt}] check: {check:.2f} s for {len(report.records)} images ({per_10k:.1f} s per 10,000); "
                  f"decoding them: {decode:.2f} s; the check is {decode / check:.1f}x cheaper")

            files = [record["file_name"] for record in report.records]
            started = time.perf_counter()
            for path in files:
                read_image_size(path)
            header = time.perf_counter() - started
            started = time.perf_counter()
            for path in files:
                inspect_image(path)
            header_and_end = time.perf_counter() - started
            started = time.perf_counter()
            full = check_dataset(name, progress=False, full_decode=True)
            full_check = time.perf_counter() - started
            assert not full.problems, full.text(5)
            scale = 10000 / len(files)
            print(f"[{fmt}] per 10,000 images: header only {header * scale:.2f} s, header and end (the truncation "
                  f"check) {header_and_end * scale:.2f} s ({header_and_end / header:.2f}x); the check with "
                  f"DATALOADER.CHECK_FULL_DECODE {full_check * scale:.1f} s ({full_check / check:.1f}x the check)")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
