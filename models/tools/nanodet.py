"""NanoDet input preparation and output decoding, shared by quantize.py and evaluate.py.

Runs inside the throwaway tools environment (numpy, opencv-python-headless). Everything that describes the network
(input size, channel order, mean/std, strides, bins, classes) is read from the model's entry in manifest.toml, so
calibration and evaluation see frames exactly as the manifest tells the Rust side to prepare them.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np


def load_manifest(path: Path) -> dict:
    with path.open("rb") as f:
        return tomllib.load(f)


def model_entry(manifest: dict, name: str) -> dict:
    for m in manifest["model"]:
        if m["name"] == name:
            return m
    raise SystemExit(f"no [[model]] named {name!r} in the manifest")


class Preprocess:
    def __init__(self, spec: dict):
        if spec["layout"] != "NCHW" or spec["dtype"] != "float32" or spec["resize"] != "stretch":
            raise SystemExit(f"unsupported input spec {spec}")
        if spec["channel_order"] not in ("BGR", "RGB"):
            raise SystemExit(f"unsupported channel order {spec['channel_order']}")
        self.name = spec["name"]
        _, self.channels, self.height, self.width = spec["shape"]
        self.rgb = spec["channel_order"] == "RGB"
        self.mean = np.asarray(spec["mean"], dtype=np.float32)
        self.std = np.asarray(spec["std"], dtype=np.float32)

    def __call__(self, frame_bgr: np.ndarray) -> np.ndarray:
        # Bilinear resize on 8-bit pixels: OpenCV does it in fixed point, so the result does not depend on
        # which SIMD path the CPU takes. Normalising in float32 afterwards is exact per element.
        img = cv2.resize(frame_bgr, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        if self.rgb:
            img = img[:, :, ::-1]
        x = (img.astype(np.float32) - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def read_frames(path: Path) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SystemExit(f"cannot open {path} with OpenCV")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def spread(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over `total` frames, first frame included."""
    count = min(count, total)
    return [i * total // count for i in range(count)]


def tensors_digest(tensors: list[np.ndarray]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(np.ascontiguousarray(t, dtype="<f4").tobytes())
    return h.hexdigest()


@dataclass
class Detections:
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2 in frame pixels
    scores: np.ndarray  # (n,)


class Decoder:
    """GFL head decoding for one class, as described in notes/models.md and the manifest's [model.decoder]."""

    def __init__(self, input_spec: dict, decoder_spec: dict):
        if decoder_spec["kind"] != "nanodet-gfl":
            raise SystemExit(f"unsupported decoder {decoder_spec['kind']}")
        _, _, self.in_h, self.in_w = input_spec["shape"]
        self.strides = list(decoder_spec["strides"])
        self.bins = decoder_spec["reg_max"] + 1
        self.num_classes = decoder_spec["num_classes"]
        self.cls = decoder_spec["person_class"]
        self.centres = {}
        for s in self.strides:
            gh, gw = self.in_h // s, self.in_w // s
            ys, xs = np.meshgrid(np.arange(gh, dtype=np.float32), np.arange(gw, dtype=np.float32), indexing="ij")
            self.centres[s] = np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], axis=1)
        self.steps = np.arange(self.bins, dtype=np.float32)

    def match_outputs(self, shapes: dict[str, tuple]) -> dict[int, tuple[str, str]]:
        """Map each stride to (scores output, regression output) by shape; names depend on the converter."""
        found = {}
        for s in self.strides:
            cells = (self.in_h // s) * (self.in_w // s)
            score = [n for n, sh in shapes.items() if tuple(sh) == (1, cells, self.num_classes)]
            reg = [n for n, sh in shapes.items() if tuple(sh) == (1, cells, 4 * self.bins)]
            if len(score) != 1 or len(reg) != 1:
                raise SystemExit(f"cannot match outputs for stride {s} by shape among {shapes}")
            found[s] = (score[0], reg[0])
        return found

    def decode(self, outputs: dict[str, np.ndarray], matched: dict[int, tuple[str, str]], threshold: float,
               frame_w: int, frame_h: int) -> Detections:
        boxes, scores = [], []
        for s, (score_name, reg_name) in matched.items():
            sc = outputs[score_name][0, :, self.cls]
            keep = np.nonzero(sc >= threshold)[0]
            if keep.size == 0:
                continue
            logits = outputs[reg_name][0, keep].reshape(-1, 4, self.bins)
            logits = logits - logits.max(axis=2, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=2, keepdims=True)
            dist = (p * self.steps).sum(axis=2) * s
            c = self.centres[s][keep]
            b = np.stack([c[:, 0] - dist[:, 0], c[:, 1] - dist[:, 1], c[:, 0] + dist[:, 2], c[:, 1] + dist[:, 3]],
                         axis=1)
            boxes.append(b)
            scores.append(sc[keep])
        if not boxes:
            return Detections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
        b = np.concatenate(boxes)
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, self.in_w) * (frame_w / self.in_w)
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, self.in_h) * (frame_h / self.in_h)
        return Detections(b, np.concatenate(scores))


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def nms(d: Detections, iou: float) -> Detections:
    order = np.argsort(-d.scores, kind="stable")
    keep = []
    suppressed = np.zeros(len(order), bool)
    ious = iou_matrix(d.boxes[order], d.boxes[order])
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed |= ious[i] > iou
    keep = np.asarray(keep, dtype=np.int64)
    return Detections(d.boxes[keep], d.scores[keep])
