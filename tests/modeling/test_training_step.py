"""
The training step as a GPU sees it: how often it reads values back to the host, and mixed precision.

A host read (a "sync" on a GPU: the host waits for every queued kernel) is what `.item()`, `int(tensor)`,
`nonzero` and boolean-mask indexing do. On the CPU they cost nothing, but they dispatch the same operators, so
a TorchDispatchMode counts them here as a GPU would suffer them.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from mutual_guide.modeling.batching import batch_ground_truth

SIZE = 64


class HostReads(TorchDispatchMode):
    """Counts the operators whose result depends on tensor values read back by the host."""

    ALWAYS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique_consecutive",
              "aten::_unique2", "aten::unique_dim"}
    BOOLEAN_INDEXING = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in self.ALWAYS:
            self.ops.append(name)
        elif name in self.BOOLEAN_INDEXING:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", [])
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                self.ops.append(name + "(bool)")
        return func(*args, **(kwargs or {}))


def test_host_read_counter_sees_what_it_counts():
    x = torch.arange(6.0)
    with HostReads() as reads:
        float(x.sum())
        x[x > 2]
        x[x > 2] = 0.0
        (x > 1).nonzero()
        x[torch.tensor([1, 2])]  # integer indexing reads nothing
    assert reads.ops == ["aten::_local_scalar_dense", "aten::index(bool)", "aten::index_put_(bool)",
                         "aten::nonzero"]


def training_batch(n, num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(n):
        k = int(torch.randint(1, 6, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * SIZE * 0.7
        wh = torch.rand(k, 2, generator=g) * SIZE * 0.3 + 8
        boxes = torch.cat([xy, xy + wh], 1).clamp(max=SIZE)  # clipped to the image, as the mapper does
        classes = torch.randint(0, num_classes, (k,), generator=g)
        instances = Instances((SIZE, SIZE), gt_boxes=Boxes(boxes), gt_classes=classes)
        image = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=g)
        batch.append({"image": image, "instances": instances, "file_name": f"image{i}.jpg"})
    return batch


@pytest.fixture
def make_model(make_cfg):
    def build(mutual_guidance=True):
        cfg = make_cfg("ShuffleNetV2", "FPN", SIZE, num_classes=3)
        cfg.MODEL.MUTUAL_GUIDE.ENABLED = mutual_guidance
        torch.manual_seed(0)
        return build_model(cfg).train()

    return build


def host_reads_of_one_step(model, batch):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    with EventStorage(), HostReads() as reads:  # in a trainer: the positives counts are logged too
        losses = model(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return reads.ops


@pytest.mark.slow
@pytest.mark.parametrize("mutual_guidance", [True, False])
def test_host_reads_of_a_training_step_do_not_grow_with_the_batch(mutual_guidance, make_model):
    model = make_model(mutual_guidance)
    small = host_reads_of_one_step(model, training_batch(2))
    large = host_reads_of_one_step(model, training_batch(8))
    assert sorted(small) == sorted(large), (small, large)
    # mutual guidance: the assignment's top-k size and detectron2's Box2BoxTransform.get_deltas assert; the
    # baseline: detectron2's Matcher (an assert, three boolean label writes) and the same get_deltas assert
    assert len(small) <= (2 if mutual_guidance else 5), small


def test_ground_truth_is_prepared_on_the_host_without_indexing():
    batch = training_batch(8)
    with HostReads() as reads:
        gt = batch_ground_truth(batch, SIZE, torch.device("cpu"))
    # its one look at the values (any box not finite or empty?) is a `tolist` of a host tensor, not an operator
    assert reads.ops == []
    counts = [len(x["instances"]) for x in batch]
    assert gt.valid.sum(1).tolist() == counts and gt.boxes.shape == (8, max(counts), 4)


# ----------------------------------------------------------------------------- NHWC layout in training
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_channel_shuffle_keeps_the_layout_and_equals_torchvisions(layout):
    from torchvision.models.shufflenetv2 import channel_shuffle as torchvision_shuffle

    from mutual_guide.modeling.backbone.shufflenet import channel_shuffle

    x = torch.randn(2, 8, 3, 5).contiguous(memory_format=layout)
    y = channel_shuffle(x, 2)
    assert torch.equal(y, torchvision_shuffle(x, 2))
    assert y.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_concat_shuffle_equals_torchvisions_concatenation_and_shuffle(layout, dtype):
    """Same values, layout and gradients as torch.cat + torchvision's shuffle, `first` half of a tensor as in the
    stride-1 unit; and the plain operators while tracing (what export records)."""
    from torchvision.models.shufflenetv2 import channel_shuffle as torchvision_shuffle

    from mutual_guide.modeling.backbone.shufflenet import concat_shuffle

    x = torch.randn(2, 12, 3, 5, dtype=dtype).contiguous(memory_format=layout).requires_grad_()
    other = torch.randn(2, 6, 3, 5, dtype=dtype).contiguous(memory_format=layout).requires_grad_()
    first = x.chunk(2, dim=1)[0]
    y, expected = concat_shuffle(first, other), torchvision_shuffle(torch.cat((first, other), 1), 2)
    assert torch.equal(y, expected) and y.is_contiguous(memory_format=layout)
    grad = torch.randn_like(expected)
    for got, want in zip(torch.autograd.grad(y, (x, other), grad), torch.autograd.grad(expected, (x, other), grad)):
        assert torch.equal(got, want)
    traced = torch.jit.trace(lambda a, b: concat_shuffle(a, b), (first.detach(), other.detach()))
    assert "aten::cat" in str(traced.graph) and torch.equal(traced(first, other), expected)


@pytest.mark.slow
def test_nhwc_training_gives_the_nchw_losses_and_gradients(make_cfg):
    """In float64, where the two layouts' different summation orders leave no visible trace (in float32,
    BatchNorm over 2 images amplifies them to about 1% in the first layer's gradient)."""
    cfg = make_cfg("ShuffleNetV2", "FPN", SIZE, num_classes=3)
    cfg.MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES = ["cpu"]
    torch.manual_seed(0)
    nhwc = build_model(cfg).train()
    cfg.MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES = []
    nchw = build_model(cfg).train()
    nchw.load_state_dict(nhwc.state_dict())
    assert nhwc.head.conf[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert nchw.head.conf[0].weight.is_contiguous() and not nhwc.head.conf[0].weight.is_contiguous()
    batch = training_batch(2)
    grads = []
    for model in (nhwc.double(), nchw.double()):
        losses = model(batch)
        sum(losses.values()).backward()
        grads.append((losses, {name: p.grad for name, p in model.named_parameters()}))
    (losses_nhwc, grads_nhwc), (losses_nchw, grads_nchw) = grads
    for key in losses_nchw:
        assert float(losses_nhwc[key]) == pytest.approx(float(losses_nchw[key]), rel=1e-12), key
    scale = max(float(g.abs().max()) for g in grads_nchw.values())
    worst = max(float((grads_nhwc[k] - grads_nchw[k]).abs().max()) for k in grads_nchw)
    assert worst <= 1e-9 * scale, (worst, scale)


# ----------------------------------------------------------------------------- mixed precision
def predictions_under_autocast(model, batch, device_type, dtype):
    images = model.preprocess_image(batch).tensor
    with torch.autocast(device_type, dtype=dtype):
        logits, deltas = model.predict(images)
    return logits, deltas


def check_autocast(model, batch, device_type, dtype):
    logits, deltas = predictions_under_autocast(model, batch, device_type, dtype)
    assert logits.dtype == dtype, "autocast did not run the network in reduced precision"
    gt = batch_ground_truth(batch, SIZE, model.device)
    with torch.autocast(device_type, dtype=dtype):
        _, labels = model.label_anchors(logits, deltas, gt)
        losses = model.losses(logits, deltas, gt)
    # the same reduced-precision predictions, given in float32 outside autocast
    _, expected_labels = model.label_anchors(logits.float(), deltas.float(), gt)
    expected = model.losses(logits.float(), deltas.float(), gt)
    for field in labels._fields:
        assert torch.equal(getattr(labels, field), getattr(expected_labels, field)), field
    assert (labels.cls_labels >= 0).any() and labels.reg_mask.any()
    for key in expected:
        assert losses[key].dtype == torch.float32, key
        assert torch.allclose(losses[key], expected[key], rtol=1e-6), (key, losses[key], expected[key])
    sum(losses.values()).backward()
    grads = [p.grad for p in model.head.conf.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_autocast_bfloat16_on_cpu_keeps_labels_and_float32_losses(make_model):
    model = make_model()
    check_autocast(model, training_batch(2), "cpu", torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_autocast_float16_on_cuda_keeps_labels_and_float32_losses(make_cfg):
    cfg = make_cfg("ShuffleNetV2", "FPN", SIZE, num_classes=3)
    cfg.MODEL.DEVICE = "cuda"
    torch.manual_seed(0)
    model = build_model(cfg).train()
    check_autocast(model, training_batch(4), "cuda", torch.float16)


@pytest.mark.slow
def test_half_model_inference(make_model):
    model = make_model().eval()
    batch = [{"image": x["image"]} for x in training_batch(2)]
    with torch.no_grad():
        expected = model(batch)
        model.half()
        got = model(batch)
    assert model.anchors.dtype == torch.float32  # kept exact under half()
    for e, g in zip(expected, got):
        e, g = e["instances"], g["instances"]
        assert len(g) > 0 and g.scores.dtype == torch.float32
        # float16 moves scores by about 1e-3: compare the best ones
        assert float(g.scores[0]) == pytest.approx(float(e.scores[0]), abs=2e-3)
