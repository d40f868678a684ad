"""
Vectorised anchor assignment + losses against the per-object oracle (mutual_guide/utils/oracle.py, the reference
the tests trust), on the same inputs:
batch 32, 320 x 320 input (12750 anchors), 80 classes, 5-10 boxes per image (`--boxes MIN MAX`: crowded scenes,
e.g. `--boxes 1 60`), mutual guidance and IoU baseline; then the authors' 2023 mutual guidance and losses
(MODEL.MUTUAL_GUIDE.RECIPE authors_2023) against their oracle.
Prints the times and how many times faster the vectorised code is, and checks both agree. The losses are timed
with their gradient: ours computes it in the forward pass (the fused focal loss), the oracle's in autograd.

    .venv/bin/python benchmarks/bench_assignment.py [--batch 32] [--repeats 3]
"""
import argparse
import time

import torch

from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances

from mutual_guide.modeling.anchors import generate_anchors, num_levels_for
from mutual_guide.modeling.assignment import build_anchor_matcher, pad_ground_truth
from mutual_guide.modeling.dynamic_assignment import DynamicMutualGuidanceMatcher
from mutual_guide.modeling.losses import mutual_guide_losses
from mutual_guide.modeling.recipe_2023 import Authors2023Losses
from mutual_guide.utils import oracle


def random_ground_truth(batch, size, num_classes, boxes_per_image=(5, 10), generator=None):
    """
    Per image, boxes_per_image[0] to [1] boxes with sides of 10 to 10 + 0.35 * size px, clipped to the image, and
    random classes: one `Instances` (gt_boxes, gt_classes) per image. Shared with bench_train_step.py and
    tools/benchmark.py, so that every timing of the assignment sees the same kind of scene.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    instances = []
    for _ in range(batch):
        k = int(torch.randint(boxes_per_image[0], boxes_per_image[1] + 1, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * size * 0.75
        wh = torch.rand(k, 2, generator=g) * size * 0.35 + 10
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
        classes = torch.randint(0, num_classes, (k,), generator=g)
        instances.append(Instances((size, size), gt_boxes=Boxes(boxes), gt_classes=classes))
    return instances


def make_inputs(batch, size, num_classes, seed=0, boxes_per_image=(5, 10)):
    g = torch.Generator().manual_seed(seed)
    anchors = generate_anchors(size, 24.0, num_levels_for(size))
    instances = random_ground_truth(batch, size, num_classes, boxes_per_image, g)
    boxes = [x.gt_boxes.tensor for x in instances]
    classes = [x.gt_classes for x in instances]
    deltas = torch.randn(batch, len(anchors), 4, generator=g) * 0.3
    logits = torch.randn(batch, len(anchors), num_classes, generator=g) - 4.0
    return anchors, boxes, classes, deltas, logits


def best_time(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--boxes", type=int, nargs=2, default=[5, 10], metavar=("MIN", "MAX"), help="boxes per image")
    parser.add_argument("--repeats", type=int, default=3, help="the vectorised side keeps its best of these")
    args = parser.parse_args()

    b2b = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
    anchors, boxes, classes, deltas, logits = make_inputs(args.batch, args.size, args.classes, boxes_per_image=args.boxes)
    n, a = deltas.shape[:2]
    pred_boxes = b2b.apply_deltas(deltas.reshape(-1, 4), anchors.repeat(n, 1)).view(n, a, 4)
    instances = [
        Instances((args.size, args.size), gt_boxes=Boxes(b), gt_classes=c) for b, c in zip(boxes, classes)
    ]
    logits.requires_grad_()
    deltas.requires_grad_()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {n}, {a} anchors, "
        f"{args.classes} classes, {sum(len(b) for b in boxes)} boxes"
    )

    for mutual in (True, False):
        name = "mutual guidance" if mutual else "IoU baseline"

        def vectorised_assign():
            gt_boxes, gt_classes, valid = pad_ground_truth(instances)
            matcher = build_anchor_matcher(mutual, (0.4, 0.5), args.classes)
            labels = matcher(anchors, gt_boxes, gt_classes, valid, pred_boxes, logits.detach())
            return gt_boxes, labels

        t_vec_assign, (gt_boxes, labels) = best_time(vectorised_assign, args.repeats)
        def vectorised_losses():
            losses = mutual_guide_losses(logits, deltas, anchors, gt_boxes, labels, b2b)
            grads = torch.autograd.grad(sum(losses.values()), [logits, deltas])
            return losses, grads

        t_vec_loss, (losses, _) = best_time(vectorised_losses, args.repeats)
        t_ora_assign, expected = best_time(
            lambda: oracle.oracle_label_anchors(
                anchors, boxes, classes, args.classes, pred_boxes, logits.detach(), mutual_guidance=mutual
            ),
            1,
        )
        def oracle_losses():
            losses = oracle.oracle_losses(logits, deltas.detach(), anchors, boxes, expected)
            torch.autograd.grad(losses["loss_cls"], [logits])  # its box loss is computed in Python floats
            return losses

        t_ora_loss, expected_losses = best_time(oracle_losses, 1)
        t_vec, t_ora = t_vec_assign + t_vec_loss, t_ora_assign + t_ora_loss

        same = torch.equal(labels.cls_labels, expected["cls_labels"]) and torch.equal(
            labels.reg_mask, expected["reg_mask"]
        )
        close = all(
            torch.allclose(losses[k].detach(), expected_losses[k].detach().to(losses[k].dtype), rtol=1e-4)
            for k in losses
        )
        print(f"\n{name}: labels identical {same}, losses agree {close}")
        print(f"  assignment          vectorised {t_vec_assign * 1e3:8.1f} ms   oracle {t_ora_assign * 1e3:8.1f} ms"
              f"   {t_ora_assign / t_vec_assign:6.1f}x faster")
        print(f"  assignment + losses (forward and backward) vectorised {t_vec * 1e3:8.1f} ms   oracle "
              f"{t_ora * 1e3:8.1f} ms   {t_ora / t_vec:6.1f}x faster")

    bench_authors_2023(args, b2b, anchors, boxes, classes, instances, pred_boxes, logits, deltas)


def bench_authors_2023(args, b2b, anchors, boxes, classes, instances, pred_boxes, logits, deltas):
    """The authors' 2023 mutual guidance and its losses, vectorised against the oracle, on the same inputs."""
    matcher = DynamicMutualGuidanceMatcher(args.classes)
    criterion = Authors2023Losses(num_classes=args.classes, mutual_guidance=True)

    def vectorised_assign():
        gt_boxes, gt_classes, valid = pad_ground_truth(instances)
        return gt_boxes, matcher(anchors, gt_boxes, gt_classes, valid, pred_boxes, logits.detach())

    t_vec_assign, (gt_boxes, labels) = best_time(vectorised_assign, args.repeats)

    def vectorised_losses():
        losses = criterion(logits, deltas, anchors, gt_boxes, labels, b2b, args.size)
        return losses, torch.autograd.grad(sum(losses.values()), [logits, deltas])

    t_vec_loss, (losses, _) = best_time(vectorised_losses, args.repeats)
    t_ora_assign, expected = best_time(
        lambda: oracle.oracle_label_anchors_2023(anchors, boxes, classes, args.classes, pred_boxes, logits.detach()),
        1,
    )

    def oracle_losses():
        losses = oracle.oracle_authors_2023_losses(logits, deltas.detach(), anchors, boxes, expected, args.size)
        torch.autograd.grad(losses["loss_cls"], [logits])  # its box losses are computed in Python floats
        return losses

    t_ora_loss, expected_losses = best_time(oracle_losses, 1)
    t_vec, t_ora = t_vec_assign + t_vec_loss, t_ora_assign + t_ora_loss
    fields = ("cls_labels", "reg_mask", "cls_weight", "reg_weight")
    same = all(torch.equal(getattr(labels, k), expected[k]) for k in fields)
    close = all(
        torch.allclose(losses[k].detach(), expected_losses[k].detach().to(losses[k].dtype), rtol=1e-4) for k in losses
    )
    print(f"\nauthors' 2023 mutual guidance: labels and weights identical {same}, losses agree {close}")
    print(f"  assignment          vectorised {t_vec_assign * 1e3:8.1f} ms   oracle {t_ora_assign * 1e3:8.1f} ms"
          f"   {t_ora_assign / t_vec_assign:6.1f}x faster")
    print(f"  assignment + losses (forward and backward) vectorised {t_vec * 1e3:8.1f} ms   oracle "
          f"{t_ora * 1e3:8.1f} ms   {t_ora / t_vec:6.1f}x faster")


if __name__ == "__main__":
    main()
