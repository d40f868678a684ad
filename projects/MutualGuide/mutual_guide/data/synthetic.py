"""
A small, deterministic detection dataset of filled shapes ("circle", "square", "triangle") on textured
backgrounds, written in COCO or VOC layout so detectron2's own loaders read it. `make demo` trains on it.

Objects are 10-50% of the image side, 1-4 per image (some images have none), may partly overlap, and are
drawn in colours kept away from the background's so that a small detector learns them in minutes on a CPU.
"""
import json
import os
import xml.etree.ElementTree as ET

import cv2
import numpy as np

__all__ = ["SYNTHETIC_CLASSES", "make_synthetic_dataset"]

SYNTHETIC_CLASSES = ("circle", "square", "triangle")
_EMPTY_IMAGE_PROB = 0.08
# Largest share of either box's area two objects may share: objects partly overlap, none is hidden.
_MAX_OVERLAP = 0.3


def _background(rng, size):
    kind = rng.randint(3)
    base = rng.uniform(40, 215, size=3)
    if kind == 0:  # noise around a colour
        img = base + rng.normal(0, rng.uniform(5, 25), size=(size, size, 3))
    elif kind == 1:  # linear gradient between two colours
        other = rng.uniform(40, 215, size=3)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = np.clip((np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2, 0, 1)[..., None]
        img = base * (1 - t) + other * t
    else:  # texture of thin random lines
        img = np.zeros((size, size, 3)) + base
        for _ in range(rng.randint(5, 15)):
            p0, p1 = rng.randint(0, size, size=2), rng.randint(0, size, size=2)
            colour = np.clip(base + rng.uniform(-50, 50, size=3), 0, 255)
            cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), colour.tolist(), 1)
    return np.clip(img, 0, 255).astype(np.uint8), base


def _object_colour(rng, background):
    """A colour at least 90 (Euclidean, 0-255 BGR) from the background's base colour."""
    for _ in range(100):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - background) > 90:
            break
    else:
        colour = 255 - background
    return [float(v) for v in colour]


def _overlap(a, b):
    """Intersection over the smaller box's area."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _draw(img, rng, cls, box, colour):
    """Fill shape `cls` whose pixels span box (x0, y0, x1, y1), x1/y1 exclusive."""
    x0, y0, x1, y1 = box
    if cls == "circle":
        r = (x1 - x0 - 1) // 2
        cv2.circle(img, (x0 + r, y0 + r), r, colour, -1)
    elif cls == "square":
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), colour, -1)
    else:  # a triangle with one side along a random edge of its box, apex on the opposite edge
        xm, ym = (x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2
        corners = {
            0: [(x0, y1 - 1), (x1 - 1, y1 - 1), (xm, y0)],
            1: [(x0, y0), (x1 - 1, y0), (xm, y1 - 1)],
            2: [(x0, y0), (x0, y1 - 1), (x1 - 1, ym)],
            3: [(x1 - 1, y0), (x1 - 1, y1 - 1), (x0, ym)],
        }[rng.randint(4)]
        cv2.fillPoly(img, [np.array(corners, dtype=np.int32)], colour)


def _make_image(rng, size):
    img, base = _background(rng, size)
    objects = []
    num = 0 if rng.rand() < _EMPTY_IMAGE_PROB else rng.randint(1, 5)
    for _ in range(num):
        for _ in range(20):
            cls = SYNTHETIC_CLASSES[rng.randint(len(SYNTHETIC_CLASSES))]
            side = int(rng.uniform(0.1, 0.5) * size)
            side += 1 - side % 2  # odd: a circle of radius (side-1)/2 fills exactly side pixels
            w = side if cls != "triangle" else int(side * rng.uniform(0.8, 1.25))
            w = min(w, size)
            x0, y0 = rng.randint(0, size - w + 1), rng.randint(0, size - side + 1)
            box = (x0, y0, x0 + w, y0 + side)
            if all(_overlap(box, o[1]) <= _MAX_OVERLAP for o in objects):
                _draw(img, rng, cls, box, _object_colour(rng, base))
                objects.append((cls, box))
                break
    return img, objects


def _write_voc_xml(path, file_name, size, objects):
    ann = ET.Element("annotation")
    ET.SubElement(ann, "filename").text = file_name
    size_el = ET.SubElement(ann, "size")
    for key, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(size_el, key).text = str(value)
    for cls, (x0, y0, x1, y1) in objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = cls
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        # VOC boxes are 1-based inclusive pixel indices; detectron2's loader subtracts 1 from xmin/ymin.
        for key, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bndbox, key).text = str(value)
    ET.ElementTree(ann).write(path)


def make_synthetic_dataset(root, fmt="coco", num_train=300, num_test=100, image_size=128, seed=0, name="synthetic"):
    """
    Write the dataset under `root` and return a dict:
    {"root", "format", "classes", "image_size", "splits": {"train"/"test": paths of that split},
     "custom_specs": DATASETS.CUSTOM entries "<name>_train" and "<name>_test" that register it}.

    COCO: root/annotations/{train,test}.json and root/images/{split}_NNNNN.jpg.
    VOC:  root/Annotations/*.xml, root/JPEGImages/*.jpg, root/ImageSets/Main/{train,test}.txt.
    The same arguments always give the same files.
    """
    if fmt not in ("coco", "voc"):
        raise ValueError(f"fmt must be 'coco' or 'voc', got {fmt!r}")
    rng = np.random.RandomState(seed)
    if fmt == "coco":
        image_dir = os.path.join(root, "images")
        os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    else:
        image_dir = os.path.join(root, "JPEGImages")
        for sub in ("Annotations", os.path.join("ImageSets", "Main")):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)

    splits, specs = {}, []
    classes_str = ",".join(SYNTHETIC_CLASSES)
    for split, count in (("train", num_train), ("test", num_test)):
        images, annotations, ids = [], [], []
        for i in range(count):
            img, objects = _make_image(rng, image_size)
            image_id = f"{split}_{i:05d}"
            cv2.imwrite(os.path.join(image_dir, image_id + ".jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            ids.append(image_id)
            if fmt == "voc":
                xml = os.path.join(root, "Annotations", image_id + ".xml")
                _write_voc_xml(xml, image_id + ".jpg", image_size, objects)
                continue
            images.append({"id": i + 1, "file_name": image_id + ".jpg", "width": image_size, "height": image_size})
            for cls, (x0, y0, x1, y1) in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": SYNTHETIC_CLASSES.index(cls) + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": (x1 - x0) * (y1 - y0),
                        "iscrowd": 0,
                    }
                )
        if fmt == "voc":
            split_file = os.path.join(root, "ImageSets", "Main", split + ".txt")
            with open(split_file, "w") as f:
                f.write("\n".join(ids) + "\n")
            splits[split] = {"dirname": root, "split": split, "split_file": split_file}
            specs.append(f"{name}_{split}:voc:root={root};split={split};classes={classes_str}")
        else:
            json_file = os.path.join(root, "annotations", split + ".json")
            categories = [{"id": k + 1, "name": c, "supercategory": "shape"} for k, c in enumerate(SYNTHETIC_CLASSES)]
            with open(json_file, "w") as f:
                json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
            splits[split] = {"json_file": json_file, "image_root": image_dir}
            specs.append(f"{name}_{split}:coco:json={json_file};images={image_dir}")
        splits[split]["num_images"] = count
    return {
        "root": root,
        "format": fmt,
        "classes": list(SYNTHETIC_CLASSES),
        "image_size": image_size,
        "splits": splits,
        "custom_specs": specs,
    }
