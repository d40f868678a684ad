#!/usr/bin/env python
"""
Write the generated "shapes" dataset (circles, squares, triangles on varied backgrounds; the demo's generator) in
COCO-json layout, for runs of configs/experiments/shapes_2020.yaml:

    python tools/make_shapes.py --output datasets/shapes [--num-train 2000 --num-test 200 --size 128 --seed 0]

writes <output>/annotations/{train,test}.json and <output>/images/, and prints the DATASETS.CUSTOM entries.
The same arguments give the same images.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mutual_guide.data import make_synthetic_dataset  # noqa: E402
from mutual_guide.utils.atomic_io import refuse_to_replace  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the generator")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --output")
    args = parser.parse_args(argv)
    refuse_to_replace([os.path.join(args.output, "annotations")], flag="--overwrite", allowed=args.overwrite)
    info = make_synthetic_dataset(args.output, fmt="coco", num_train=args.num_train, num_test=args.num_test,
                                  image_size=args.size, seed=args.seed, name="shapes")
    print(f"{args.num_train} training and {args.num_test} test images of {args.size} px in {info['root']}, "
          f"classes {', '.join(info['classes'])}")
    print("DATASETS.CUSTOM", str(info["custom_specs"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
