"""
A small detection dataset of real photographs, from the annotated aerial images that the `deepforest` package
ships (NEON tree crowns, one class, VOC-style XML): cut into 300 x 300 tiles after scaling by 0.5, so that the
crowns are about 20 pixels. Writes COCO-json layout (PNG tiles, lossless, so that OpenCV and PIL read the same
pixels):

    <output>/annotations/{train,test}.json, <output>/images/{train,test}_<image>_<x>_<y>.png

Training tiles come from 2019_YELL_2_528000_4978000_image_crop2 (stride 60), test tiles from
2019_YELL_2_541000_4977000_image_crop (stride 150): the two images do not overlap. A crown is kept in a tile
when at least half of its box lies inside, clipped to the tile.

`--split within-image` is a set both recipes learn from scratch in a few hundred CPU iterations: train and test
tiles both come from 2019_YELL_2_528000_4978000_image_crop2, the train tiles from its left 70 % (stride
--tile / 4), the test tiles from its right 30 % (stride --tile / 2): no pixel is in both. The default split
(`across-images`) tests on another image, which a from-scratch model does not reach at CPU budgets.

Nothing is downloaded here: give the package,

    pip download deepforest --no-deps -d downloads       # a wheel of about 20 MB (or: pip install deepforest)
    .venv/bin/python tools/make_tree_tiles.py --deepforest downloads/deepforest-*.whl --output datasets/trees

--deepforest is the wheel (or any zip of the package) or a folder holding deepforest/data/ or data/.
"""
import argparse
import glob
import json
import os
import xml.etree.ElementTree as ET
import zipfile

import cv2
import numpy as np

TRAIN_IMAGE = "2019_YELL_2_528000_4978000_image_crop2"
TEST_IMAGE = "2019_YELL_2_541000_4977000_image_crop"


def read_package_file(source, name):
    """Bytes of deepforest/data/<name> from a wheel/zip or an installed/extracted folder."""
    if os.path.isfile(source):
        with zipfile.ZipFile(source) as z:
            return z.read(f"deepforest/data/{name}")
    for folder in (os.path.join(source, "deepforest", "data"), os.path.join(source, "data"), source):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                return f.read()
    raise FileNotFoundError(f"--deepforest {source!r}: no deepforest/data/{name} in it")


def load(source, stem, scale):
    image = cv2.imdecode(np.frombuffer(read_package_file(source, stem + ".png"), np.uint8), cv2.IMREAD_COLOR)
    root = ET.fromstring(read_package_file(source, stem + ".xml"))
    boxes = np.array([[float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
                      for o in root.iter("object")], np.float64)
    h, w = image.shape[:2]
    image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return image, boxes * scale


def positions(length, tile, stride):
    out = list(range(0, length - tile + 1, stride))
    return out if out[-1] == length - tile else out + [length - tile]


def tiles(split, stem, image, boxes, tile, stride, out_dir, x_range=None):
    """Tiles of `image` (those inside columns `x_range` = (start, stop) when given) and their boxes, as COCO json."""
    images, annotations = [], []
    h, w = image.shape[:2]
    x_start, x_stop = x_range or (0, w)
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    for y in positions(h, tile, stride):
        for x in positions(x_stop - x_start, tile, stride):
            x += x_start
            clipped = np.clip(boxes - [x, y, x, y], 0, tile)
            inside = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
            keep = inside >= 0.5 * areas
            file_name = f"{split}_{stem[-12:]}_{x:04d}_{y:04d}.png"
            cv2.imwrite(os.path.join(out_dir, "images", file_name), image[y : y + tile, x : x + tile])
            image_id = len(images) + 1
            images.append({"id": image_id, "file_name": file_name, "height": tile, "width": tile})
            for b in clipped[keep]:
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                    "bbox": [round(float(b[0]), 2), round(float(b[1]), 2), round(float(b[2] - b[0]), 2),
                             round(float(b[3] - b[1]), 2)],
                    "area": round(float((b[2] - b[0]) * (b[3] - b[1])), 2),
                })
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "tree"}]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deepforest", required=True, help="the deepforest wheel, or a folder with its data/")
    parser.add_argument("--output", required=True)
    parser.add_argument("--scale", type=float, default=0.5)
    parser.add_argument("--tile", type=int, default=300)
    parser.add_argument("--split", choices=("across-images", "within-image"), default="across-images",
                        help="test tiles from another image (default) or from a held-out part of the training image")
    args = parser.parse_args()
    if "*" in args.deepforest:
        args.deepforest = sorted(glob.glob(args.deepforest))[-1]
    os.makedirs(os.path.join(args.output, "images"), exist_ok=True)
    os.makedirs(os.path.join(args.output, "annotations"), exist_ok=True)
    if args.split == "across-images":
        plan = (("train", TRAIN_IMAGE, 60, None), ("test", TEST_IMAGE, 150, None))
    else:
        width = load(args.deepforest, TRAIN_IMAGE, args.scale)[0].shape[1]
        cut = int(0.7 * width)
        plan = (("train", TRAIN_IMAGE, args.tile // 4, (0, cut)), ("test", TRAIN_IMAGE, args.tile // 2, (cut, width)))
    for split, stem, stride, x_range in plan:
        image, boxes = load(args.deepforest, stem, args.scale)
        coco = tiles(split, stem, image, boxes, args.tile, stride, args.output, x_range)
        with open(os.path.join(args.output, "annotations", f"{split}.json"), "w") as f:
            json.dump(coco, f)
        sides = [np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in coco["annotations"]]
        print(f"{split}: {len(coco['images'])} tiles of {args.tile} px, {len(coco['annotations'])} boxes, "
              f"box side median {np.median(sides):.1f} px (10th percentile {np.percentile(sides, 10):.1f})")
    print(f'DATASETS.CUSTOM \'["trees_train:coco:json={args.output}/annotations/train.json;images={args.output}/'
          f'images", "trees_test:coco:json={args.output}/annotations/test.json;images={args.output}/images"]\'')


if __name__ == "__main__":
    main()
