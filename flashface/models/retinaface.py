"""RetinaFace with a ResNet-50 backbone: the face detector of FlashFace's reference photos.

Network (official ``retinaface_resnet50.pth`` key names): torchvision's ResNet-50 under
``body.`` (stem and layer1..layer4; layer2/3/4 feed the FPN at strides 8/16/32), an FPN to
256 channels, one SSH context module per level, and per level 1x1 heads for 2 anchors:
class logits (2), box deltas (4) and five landmark deltas (10).

`RetinaFace.detect` reproduces the official post-processing: prior boxes for the actual input
size, decoding with variances (0.1, 0.2), softmax face score, the best `pre_nms_topk`, score threshold
(strictly greater), greedy NMS with the "+1 pixel" area convention (IoU <= 0.4 kept) and at most
`post_nms_topk` detections (the official 5000 and 750). `load_face_detector` also reads facexlib's
``detection_Resnet50_Final.pth`` naming (``ClassHead``/``BboxHead``/``LandmarkHead``, optional ``module.`` prefix).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import Checkpoint, Layout, TensorPlan, load_layout
from .ops import TORCH_OPERATIONS

# How error messages name this network.
MODEL_NAME = "RetinaFace ResNet-50 face detector (retinaface_resnet50.pth or detection_Resnet50_Final.pth)"
MIN_SIZES = ((16, 32), (64, 128), (256, 512))  # anchor sizes in pixels, per FPN level
STRIDES = (8, 16, 32)
VARIANCES = (0.1, 0.2)  # centre, size
BGR_MEAN = (104.0, 117.0, 123.0)  # subtracted from BGR pixel values in [0, 255]
FPN_WIDTH = 256
ANCHORS_PER_LOCATION = 2
NUM_LANDMARKS = 5
# facexlib's head module names -> the official ones.
FACEXLIB_HEAD_NAMES = {"ClassHead.": "class_head.", "BboxHead.": "bbox_head.", "LandmarkHead.": "landmark_head."}
DATA_PARALLEL_PREFIX = "module."
BATCH_NORM_COUNTER = "num_batches_tracked"


def _conv_bn(ops, in_channels: int, out_channels: int, kernel_size: int, relu: bool) -> nn.Sequential:
    """Conv (no bias) + BatchNorm [+ ReLU]; keys `.0.weight`, `.1.*` as in the official file.

    The official activation is LeakyReLU with slope 0 at these widths, i.e. a ReLU.
    """
    layers = [
        ops.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ResNet50Features(nn.Module):
    """torchvision's ResNet-50 without pooling and classifier, returning layer2..layer4 outputs."""

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class FPN(nn.Module):
    def __init__(self, ops, in_channels: tuple[int, int, int], width: int):
        super().__init__()
        self.output1 = _conv_bn(ops, in_channels[0], width, 1, relu=True)
        self.output2 = _conv_bn(ops, in_channels[1], width, 1, relu=True)
        self.output3 = _conv_bn(ops, in_channels[2], width, 1, relu=True)
        self.merge1 = _conv_bn(ops, width, width, 3, relu=True)
        self.merge2 = _conv_bn(ops, width, width, 3, relu=True)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        p3, p4, p5 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[-2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[-2:], mode="nearest"))
        return [p3, p4, p5]


class SSH(nn.Module):
    """Context module: a 3x3 branch (half the width) and stacked 3x3 branches for 5x5 and 7x7
    receptive fields (a quarter each), concatenated, then ReLU."""

    def __init__(self, ops, width: int):
        super().__init__()
        self.conv3X3 = _conv_bn(ops, width, width // 2, 3, relu=False)
        self.conv5X5_1 = _conv_bn(ops, width, width // 4, 3, relu=True)
        self.conv5X5_2 = _conv_bn(ops, width // 4, width // 4, 3, relu=False)
        self.conv7X7_2 = _conv_bn(ops, width // 4, width // 4, 3, relu=True)
        self.conv7x7_3 = _conv_bn(ops, width // 4, width // 4, 3, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5 = self.conv5X5_1(x)
        branch7 = self.conv7x7_3(self.conv7X7_2(branch5))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(branch5), branch7], dim=1))


class AnchorHead(nn.Module):
    """1x1 conv predicting `values` numbers per anchor, flattened to [B, H*W*anchors, values]."""

    def __init__(self, ops, width: int, values: int):
        super().__init__()
        self.values = values
        self.conv1x1 = ops.Conv2d(width, ANCHORS_PER_LOCATION * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


@dataclass
class Detections:
    """Detections in one image, best first, in the detector input's pixel coordinates."""

    boxes: torch.Tensor  # [M, 5]: x1, y1, x2, y2, score
    landmarks: torch.Tensor  # [M, 5, 2]: left eye, right eye, nose, mouth left, mouth right


class RetinaFace(nn.Module):
    """`operations` builds the FPN, context modules and heads; the backbone is torchvision's."""

    def __init__(self, operations=None):
        super().__init__()
        ops = operations or TORCH_OPERATIONS
        self.body = ResNet50Features()
        self.fpn = FPN(ops, (512, 1024, 2048), FPN_WIDTH)
        self.ssh1 = SSH(ops, FPN_WIDTH)
        self.ssh2 = SSH(ops, FPN_WIDTH)
        self.ssh3 = SSH(ops, FPN_WIDTH)
        levels = len(STRIDES)
        self.class_head = nn.ModuleList(AnchorHead(ops, FPN_WIDTH, 2) for _ in range(levels))
        self.bbox_head = nn.ModuleList(AnchorHead(ops, FPN_WIDTH, 4) for _ in range(levels))
        self.landmark_head = nn.ModuleList(AnchorHead(ops, FPN_WIDTH, 2 * NUM_LANDMARKS) for _ in range(levels))

    def forward(self, normalized: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw head outputs for a normalized batch (see `normalize`): class logits [B,P,2],
        box deltas [B,P,4], landmark deltas [B,P,10], priors ordered level, row, column, anchor."""
        features = [
            ssh(level) for ssh, level in zip((self.ssh1, self.ssh2, self.ssh3), self.fpn(self.body(normalized)))
        ]
        logits, boxes, landmarks = (
            torch.cat([head(f) for head, f in zip(heads, features)], dim=1)
            for heads in (self.class_head, self.bbox_head, self.landmark_head)
        )
        return logits, boxes, landmarks

    @torch.no_grad()
    def detect(
        self,
        images: torch.Tensor,
        score_threshold: float,
        nms_threshold: float = 0.4,
        pre_nms_topk: int = 5000,
        post_nms_topk: int = 750,
    ) -> list[Detections]:
        """Faces in RGB images [B,3,H,W] with values in [0,1]; scores must exceed the threshold.

        Runs on the images' device (the caller's choice), the network in the weights' dtype;
        decoding and NMS in fp32.
        """
        height, width = images.shape[-2:]
        logits, box_deltas, landmark_deltas = (
            t.float()
            for t in self(normalize(images).to(self.body.conv1.weight.dtype))  # type: ignore[union-attr]
        )
        scores = logits.softmax(dim=-1)[..., 1]
        priors = prior_boxes(height, width, device=scores.device)
        boxes = decode_boxes(box_deltas, priors, width, height)
        landmarks = decode_landmarks(landmark_deltas, priors, width, height)
        results = []
        for image_scores, image_boxes, image_landmarks in zip(scores, boxes, landmarks):
            top_scores, top_indices = image_scores.topk(min(pre_nms_topk, image_scores.numel()))
            candidates = top_indices[top_scores > score_threshold]
            found = torch.cat([image_boxes[candidates], image_scores[candidates, None]], dim=1)
            keep = nms(found[:, :4], found[:, 4], nms_threshold)[:post_nms_topk]
            results.append(Detections(found[keep], image_landmarks[candidates][keep]))
        return results


def normalize(images: torch.Tensor) -> torch.Tensor:
    """RGB in [0,1] -> the network input: BGR in [0,255] minus the mean, in fp32 (no std)."""
    mean = torch.tensor(BGR_MEAN, device=images.device).view(1, 3, 1, 1)
    return 255.0 * images.float().flip(1) - mean


def prior_boxes(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Anchor boxes [P,4] (cx, cy, w, h) relative to the image size, for an input of that size.

    Computed in float64 and rounded to fp32 once, like the official list of Python floats.
    """
    levels = []
    for stride, sizes in zip(STRIDES, MIN_SIZES):
        rows, cols = -(-height // stride), -(-width // stride)
        cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * stride / height
        cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * stride / width
        grid_y, grid_x = torch.meshgrid(cy, cx, indexing="ij")
        sizes = torch.tensor(sizes, dtype=torch.float64)
        per_anchor = torch.stack(
            torch.broadcast_tensors(grid_x[..., None], grid_y[..., None], sizes / width, sizes / height), dim=-1
        )
        levels.append(per_anchor.reshape(-1, 4))
    return torch.cat(levels).to(device=device, dtype=torch.float32)


def decode_boxes(deltas: torch.Tensor, priors: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Box deltas [...,P,4] -> corners x1,y1,x2,y2 in pixels."""
    centre = priors[:, :2] + deltas[..., :2] * VARIANCES[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(deltas[..., 2:] * VARIANCES[1])
    top_left = centre - size / 2
    scale = torch.tensor([width, height], dtype=deltas.dtype, device=deltas.device)
    return torch.cat([top_left, size + top_left], dim=-1) * scale.repeat(2)


def decode_landmarks(deltas: torch.Tensor, priors: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Landmark deltas [...,P,10] -> points [...,P,5,2] in pixels."""
    offsets = deltas.unflatten(-1, (NUM_LANDMARKS, 2))
    points = priors[:, None, :2] + offsets * VARIANCES[0] * priors[:, None, 2:]
    return points * torch.tensor([width, height], dtype=deltas.dtype, device=deltas.device)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first.

    Areas count pixels inclusively (+1 on each side, the official convention, which
    torchvision.ops.nms does not use); a box is dropped when its IoU with a kept one exceeds
    the threshold. Equal scores keep the later index first, as the official argsort().flip(0).
    """
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort(stable=True).flip(0)
    keep = []
    while order.numel():
        best, rest = order[0], order[1:]
        keep.append(best)
        overlap_w = (torch.minimum(x2[best], x2[rest]) - torch.maximum(x1[best], x1[rest]) + 1).clamp(min=0)
        overlap_h = (torch.minimum(y2[best], y2[rest]) - torch.maximum(y1[best], y1[rest]) + 1).clamp(min=0)
        intersection = overlap_w * overlap_h
        iou = intersection / (areas[best] + areas[rest] - intersection)
        order = rest[iou <= iou_threshold]
    return torch.stack(keep) if keep else torch.empty(0, dtype=torch.long, device=boxes.device)


def official_key(file_key: str) -> str:
    """A key of either published naming -> the official one (facexlib heads, DataParallel prefix)."""
    if file_key.startswith(DATA_PARALLEL_PREFIX):
        file_key = file_key[len(DATA_PARALLEL_PREFIX) :]
    for facexlib_name, official_name in FACEXLIB_HEAD_NAMES.items():
        if file_key.startswith(facexlib_name):
            return official_name + file_key[len(facexlib_name) :]
    return file_key


def _is_batch_norm_counter(key: str) -> bool:
    return key.endswith("." + BATCH_NORM_COUNTER)


def checkpoint_plan(module_keys, file_keys) -> dict[str, TensorPlan]:
    """Module key -> the file key holding it, in whichever naming the file uses.

    BatchNorm's `num_batches_tracked` training counters are never read (inference does not use
    them, and older exports lack them): the module gets 0 and the file may or may not have them.
    """
    file_key_by_official = {official_key(k): k for k in file_keys}
    zero_counter = TensorPlan((), lambda _: torch.zeros((), dtype=torch.int64))
    return {
        key: zero_counter if _is_batch_norm_counter(key) else TensorPlan.copy(file_key_by_official.get(key, key))
        for key in module_keys
    }


def infer_layout(checkpoint: Checkpoint) -> Layout[None]:
    """The file's naming (official or facexlib) read off its keys: RetinaFace-R50 has no
    architecture to infer (config None)."""
    with torch.device("meta"):
        module_keys = list(RetinaFace().state_dict())
    return Layout(None, checkpoint_plan(module_keys, checkpoint.keys()), _is_batch_norm_counter)


def load_face_detector(
    source: str | os.PathLike | Checkpoint,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    operations=None,
) -> RetinaFace:
    """Load RetinaFace-R50 from a path or an open `Checkpoint` (official or facexlib naming).

    The official pipeline runs the detector in fp32, the default; other dtypes work too.
    """
    return load_layout(
        lambda _: RetinaFace(operations),
        source,
        infer_layout,
        what=MODEL_NAME,
        device=device,
        dtype=dtype,
    )
