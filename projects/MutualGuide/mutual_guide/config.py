"""Config keys of the Mutual Guidance project.

`add_mutual_guide_config(cfg)` declares the keys this project adds to detectron2's, each with its default and a
one-line comment; it sets no key detectron2 already has. The detectron2 keys the paper's detector sets otherwise
(meta-architecture, pixel mean, solver, batch, detections per image...) are in configs/Base-MutualGuide.yaml, the
base of every Mutual Guidance config; configs/Base-RetinaNet-MG.yaml sets those of detectron2's RetinaNet.
"""
from detectron2.config import CfgNode as CN


def add_mutual_guide_config(cfg):
    """Declare the project's keys (none of detectron2's) with their defaults on `cfg`; returns `cfg`."""
    _C = cfg

    # ---------------------------------------------------------------- model
    # ImageNet initialisation of the backbone, applied by the trainer when a training run starts without
    # MODEL.WEIGHTS (never by build_model): "" (none), "torchvision" (torchvision's published weights, fetched by
    # torchvision's own loader) or the path of a local file holding a torchvision-style state dict.
    _C.MODEL.BACKBONE.PRETRAINED = ""
    # Train-time RepVGG blocks (3x3 + 1x1 + identity branches) or deploy-time fused 3x3 convs.
    _C.MODEL.BACKBONE.REPVGG_DEPLOY = False
    # Width/depth variant of the 2023 network's backbones (CSPDarknet "0.5x"/"0.75x", ShuffleNetV2_2023 "1.0x"/"1.5x",
    # RepVGG2023 "A0"); "" for ResNet2023 and the 2020 network's backbones, which have one variant each.
    _C.MODEL.BACKBONE.VERSION = ""

    _C.MODEL.NECK = CN()
    _C.MODEL.NECK.NAME = "FPN"  # one of SSD, FPN, PAFPN, RFB; SSD2023, FPN2023, PAFPN2023 (NECK_REGISTRY)
    _C.MODEL.NECK.OUT_CHANNELS = 128  # channels of every pyramid level
    # Conv unit of the 2023 network's neck and head: "basic" (conv-BN-SiLU) or "depthwise" (5x5 depthwise + 1x1)
    _C.MODEL.NECK.CONV_BLOCK = "basic"

    _C.MODEL.MUTUAL_GUIDE = CN()
    # "mg2020": the paper's network (code at fd2c4cc); "mg2023": the authors' later one (code at 108b4a8), with its
    # necks (NECK.NAME *2023), conv-unit + 1x1 heads, backbone maps at strides 16/32 and anchors from stride 16.
    _C.MODEL.MUTUAL_GUIDE.NETWORK = "mg2020"
    # True: mutual guidance assignment; False: the IoU baseline (MutualGuideRetinaNet: detectron2's RetinaNet)
    _C.MODEL.MUTUAL_GUIDE.ENABLED = True
    # object classes, without background (MutualGuideRetinaNet reads MODEL.RETINANET.NUM_CLASSES, equal to this)
    _C.MODEL.MUTUAL_GUIDE.NUM_CLASSES = 80
    _C.MODEL.MUTUAL_GUIDE.ANCHOR_BASE_SIZE = 24.0  # anchor side at the first level; level k uses BASE * 2**k
    # below the first: negative; at or above the second: positive (MutualGuideRetinaNet: MODEL.RETINANET's)
    _C.MODEL.MUTUAL_GUIDE.IOU_THRESHOLDS = [0.4, 0.5]
    # What an ignored anchor leaves out of the classification loss: "anchor", all its class scores (the paper's
    # code, fd2c4cc), or "class", only the score of the class it is ignored for (the authors' later code, a192256 on).
    # MutualGuideRetinaNet has RetinaNet's rule, "anchor", only.
    _C.MODEL.MUTUAL_GUIDE.IGNORE = "anchor"
    _C.MODEL.MUTUAL_GUIDE.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # SSD variances 0.1/0.2
    _C.MODEL.MUTUAL_GUIDE.FOCAL_LOSS_ALPHA = 0.25
    _C.MODEL.MUTUAL_GUIDE.FOCAL_LOSS_GAMMA = 1.0  # the paper's code uses 1.0, not RetinaNet's 2.0
    _C.MODEL.MUTUAL_GUIDE.BALANCED_L1_ALPHA = 0.5
    _C.MODEL.MUTUAL_GUIDE.BALANCED_L1_GAMMA = 1.5
    _C.MODEL.MUTUAL_GUIDE.BALANCED_L1_BETA = 0.11
    _C.MODEL.MUTUAL_GUIDE.LOSS_CLS_WEIGHT = 1.0
    _C.MODEL.MUTUAL_GUIDE.LOSS_BOX_REG_WEIGHT = 1.0
    _C.MODEL.MUTUAL_GUIDE.SCORE_THRESH_TEST = 0.005  # per-class score kept before NMS
    _C.MODEL.MUTUAL_GUIDE.NMS_THRESH_TEST = 0.5  # per-class NMS IoU
    # Test-time NMS (modeling/postprocessing.py): "per_class", the paper's; "class_agnostic", the authors' code at
    # 108b4a8 (one NMS on each anchor's best score, then a detection for every class above the threshold).
    _C.MODEL.MUTUAL_GUIDE.NMS_RULE = "per_class"
    # Fold BatchNorm into the convolutions (and fuse RepVGG branches) before `train_net.py --eval-only` and in
    # MutualGuidePredictor (demo.py): same outputs, faster. Evaluation during training keeps the training model.
    _C.MODEL.MUTUAL_GUIDE.FUSE_BN_AT_INFERENCE = True
    # Multi-process training: synchronise BatchNorm statistics across processes (GPUs only; ignored with a
    # warning on the CPU, and without effect in a single process).
    _C.MODEL.MUTUAL_GUIDE.SYNC_BN = True
    # Device types (of MODEL.DEVICE when the model is built) on which the network runs in the NHWC layout, in
    # training and inference. Measured faster on the CPU (oneDNN); not measured on GPUs, so off there by default.
    _C.MODEL.MUTUAL_GUIDE.CHANNELS_LAST_DEVICES = ["cpu"]
    # dtype the network computes in, in training, evaluation, the predictor (demo.py) and TorchScript export:
    # "float32", "bfloat16", "float16" or "auto" (engine/precision.py: bfloat16 or float16 where the device runs it
    # faster than float32, else float32 with one message; losses, assignment and postprocessing stay float32).
    # SOLVER.AMP.ENABLED True with "float32" means "float16" on CUDA (detectron2's AMPTrainer) and "auto" on the CPU.
    _C.MODEL.PRECISION = "float32"
    # Start training from MODEL.WEIGHTS trained on other classes: every tensor that fits is loaded, the class-logit
    # layers start afresh (prior 0.01). False: any tensor that does not fit is an error.
    _C.MODEL.MUTUAL_GUIDE.FINETUNE = False
    # Assignment and losses: "paper" (the paper's code, fd2c4cc: the keys above) or "authors_2023" (the authors'
    # code at 108b4a8: dynamic soft mutual guidance, varifocal + Poly-1, balanced L1 + SIoU; the keys of
    # RECIPE_2023, docs/recipe_2023.md). ENABLED still chooses mutual guidance or the IoU baseline.
    _C.MODEL.MUTUAL_GUIDE.RECIPE = "paper"
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023 = CN()
    # an object takes as many positives as the sum of its TOPK best qualities (truncated, at least 1)
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.TOPK = 15
    # regression quality: anchor IoU * exp(class score / SIGMA), capped at 1
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.SIGMA = 2.0
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.VFL_ALPHA = 0.75  # weight of the negatives' focal term (their GFocalLoss)
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.VFL_GAMMA = 2.0  # focal exponent of the negatives' term and of Poly-1
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.POLY_EPSILON = 1.0  # weight of the Poly-1 term eps * (1 - p_t)^(gamma + 1)
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.LOSS_CLS_WEIGHT = 2.0  # loss_cls of mutual guidance
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.LOSS_BOX_REG_WEIGHT = 1.0  # loss_box_reg (balanced L1), both assignments
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.LOSS_BOX_IOU_WEIGHT = 2.0  # loss_box_iou (SIoU), mutual guidance only
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.BASELINE_FOCAL_ALPHA = 0.25  # IoU baseline's focal loss (their FocalLoss)
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.BASELINE_FOCAL_GAMMA = 2.0
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.BASELINE_LOSS_CLS_WEIGHT = 2.0  # loss_cls of the IoU baseline
    # Fixes of the authors' bugs, followed when False (docs/recipe_2023.md): the baseline trains class c as c - 1
    # and class 0 as background; a batch without positives divides by 0; SIoU is NaN at coinciding centres.
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.FIX_BASELINE_LABELS = False
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.FIX_EMPTY_BATCH = False
    _C.MODEL.MUTUAL_GUIDE.RECIPE_2023.FIX_SIOU_CENTRES = False
    # Every this many iterations, what the assignment gave each object (positives of each task per object, their
    # overlap, objects left without any, by size) goes to metrics.json and TensorBoard, and a summary of the run to
    # OUTPUT_DIR/assignment_stats.json (modeling/assignment_stats.py); 0: never, and nothing is computed.
    _C.MODEL.MUTUAL_GUIDE.ASSIGNMENT_STATS_PERIOD = 0
    # Exponential moving average of the weights (engine/ema.py), for every meta-architecture; d2go's key names.
    # Evaluation during training, model_best.pth and the "model" of every checkpoint are the averaged weights.
    _C.MODEL_EMA = CN()
    _C.MODEL_EMA.ENABLED = False  # keep, evaluate and save an average of the weights, updated after every step
    # decay after u updates: DECAY * (1 - exp(-u / RAMP_ITERS)), as the authors' code at 108b4a8 (0.9998, 2000)
    _C.MODEL_EMA.DECAY = 0.9998
    _C.MODEL_EMA.RAMP_ITERS = 2000  # <= 0: the decay is DECAY from the first update (d2go's constant decay)
    # Best (anchor, class) pairs of each pyramid level kept per image before NMS (detectron2 RetinaNet's
    # TOPK_CANDIDATES_TEST); <= 0 keeps every pair above the score threshold, as the paper's code.
    _C.TEST.TOPK_CANDIDATES = 1000
    # Images per batch of each evaluating process.
    _C.TEST.IMS_PER_BATCH = 8

    # ---------------------------------------------------------------- input and augmentation
    # The dataset mapper (data/mapper.py DATASET_MAPPER_REGISTRY): "MutualGuideDatasetMapper" for MutualGuideDetector,
    # "DatasetMapper" (detectron2's) for RetinaNet-style detectors that take images of any size.
    _C.INPUT.DATASET_MAPPER = "MutualGuideDatasetMapper"
    _C.INPUT.SIZE = 320  # square input side (multiple of 64); 4 pyramid levels below 512, 5 from 512
    # The paper's code's train-time augmentation (data/data_augment.py at fd2c4cc): crop, colour distortion, zoom-out,
    # mirror, resize with a random OpenCV interpolation. False: resize only (cv2.INTER_LINEAR).
    _C.INPUT.MG_AUGMENT = True
    # Which train-time augmentation MG_AUGMENT runs: "paper" (above) or "authors_2023", the authors' code at
    # 108b4a8: colour distortion, then one crop-or-zoom-out window (scale 0.25-1.75, p 0.75), mirror, linear resize.
    _C.INPUT.MG_AUGMENT_RECIPE = "paper"
    _C.INPUT.EXPAND_MAX_RATIO = 4.0  # zoom-out canvas area up to this ratio squared (scale 1 to this ratio)
    _C.INPUT.EXPAND_PROB = 0.6  # probability of the zoom-out
    # After augmentation a box is kept when its shorter side is more than this fraction of the image side.
    _C.INPUT.MIN_BOX_SIDE_RATIO = 0.01
    # Hue shift of the colour distortion, in units of OpenCV's uint8 hue channel (0-180, 2 degrees a unit): the
    # paper's code adds an integer in [-18, 18], i.e. up to 36 degrees.
    _C.INPUT.HUE_DELTA = 18
    # Crowd annotations (iscrowd=1) train as objects of their class, as the paper's COCO loader reads them
    # (getAnnIds with iscrowd=None); False leaves them out of training, as detectron2's mappers do.
    _C.INPUT.TRAIN_CROWD_BOXES = True

    # ---------------------------------------------------------------- data loading
    # Page-locked training batches (faster host-to-GPU copies); used only when MODEL.DEVICE is a CUDA device.
    _C.DATALOADER.PIN_MEMORY = True
    # The dataset check decodes every image (catching damage anywhere in a file) instead of reading its header
    # and end (which catches truncated JPEG/PNG): about as slow as one pass over the data.
    _C.DATALOADER.CHECK_FULL_DECODE = False

    # ---------------------------------------------------------------- datasets
    # Datasets declared without code. Each entry is a string "name:format:key=value;key=value":
    #   "mydata_train:voc:root=/data/mine;split=train;classes=cat,dog"
    #   "mydata_val:coco:json=/data/mine/val.json;images=/data/mine/images"
    # They are registered before the trainer builds its loaders, so DATASETS.TRAIN/TEST may name them.
    _C.DATASETS.CUSTOM = []
    # Pixel convention of the ground truth, in training and evaluation alike (data/box_convention.py):
    # "detectron2" (its loaders' and evaluators', consistent) or "paper" (the authors' code at fd2c4cc, whose VOC
    # evaluation scores every detection one pixel down and right: only to reproduce their tables to the digit).
    _C.DATASETS.BOX_CONVENTION = "detectron2"
    # Images the dataset check finds in error (missing, unreadable, wrong size, bad annotation...) stop the
    # run before the first iteration; True leaves them out instead, listed and counted in the log.
    _C.DATALOADER.SKIP_BAD_IMAGES = False

    # ---------------------------------------------------------------- solver
    # Read by nothing: training uses detectron2's SGD (DefaultTrainer.build_optimizer); declared so that a config
    # naming it ("SGD") still loads.
    _C.SOLVER.OPTIMIZER = "SGD"

    # ---------------------------------------------------------------- evaluation and drawing
    _C.TEST.DRAW = False  # draw predictions of an evaluation run into OUTPUT_DIR/draw/<dataset>/
    # predictions drawn from this score (TEST.DRAW), and counted in the confusion matrix of OUTPUT_DIR/eval/<dataset>/
    _C.TEST.DRAW_SCORE_THRESH = 0.3
    # Evaluation result that decides OUTPUT_DIR/model_best.pth (higher is better), kept when TEST.EVAL_PERIOD > 0.
    _C.TEST.BEST_METRIC = "bbox/AP50"
    # Stop training when TEST.BEST_METRIC has not improved for this many evaluations in a row; 0: never.
    _C.TEST.EARLY_STOP_PATIENCE = 0
    # Sliced inference (engine/slicing.py) for images much larger than the network's input: in the predictor
    # (demo.py) and in evaluation (--eval-only and TEST.EVAL_PERIOD), detect on overlapping tiles and merge.
    _C.TEST.SLICE = CN()
    _C.TEST.SLICE.ENABLED = False  # detect on tiles (and the whole image) instead of the whole image alone
    _C.TEST.SLICE.TILE_SIZE = 0  # tile side in the image's pixels; 0: INPUT.SIZE (tiles at the network's scale)
    _C.TEST.SLICE.OVERLAP = 0.25  # fraction of the tile side shared by neighbours: objects up to it come out whole
    _C.TEST.SLICE.WHOLE_IMAGE = True  # add the whole image's detections: objects larger than the overlap come from it
    _C.TEST.SLICE.NMS_THRESH = 0.5  # IoU of the class-wise NMS that merges tiles and the whole-image pass
    return cfg
