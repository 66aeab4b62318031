"""Compare the int8 detector with the fp32 one on real footage: agreement of person detections, and speed.

    python evaluate.py --manifest manifest.toml --reference NAME --candidate NAME \
        --reference-model A.onnx --candidate-model B.onnx --footage CLIP [--json OUT]

Runs inside the throwaway tools environment (see requirements-tools.txt). There is no ground truth for the clip,
so the fp32 model's detections are the reference: recall is the share of fp32 detections that int8 also makes,
precision the share of int8 detections that fp32 also makes, both at IoU >= --match-iou with one-to-one greedy
matching (highest int8 score first). Speed is `session.run` alone (no decoding, no pre-processing), median over every frame, each model in
a pass of its own. Other work on the machine skews it: the report carries the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import nanodet


def make_session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class Runner:
    def __init__(self, path: Path, entry: dict, threads: int):
        self.sess = make_session(path, threads)
        self.input = self.sess.get_inputs()[0].name
        self.names = [o.name for o in self.sess.get_outputs()]
        self.decoder = nanodet.Decoder(entry["input"], entry["decoder"])
        self.matched = self.decoder.match_outputs({o.name: o.shape for o in self.sess.get_outputs()})
        self.times_ms: list[float] = []

    def run(self, x: np.ndarray, timed: bool = True) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = self.sess.run(self.names, {self.input: x})
        if timed:
            self.times_ms.append((time.perf_counter() - t0) * 1000.0)
        return dict(zip(self.names, out))

    def detect(self, x: np.ndarray, w: int, h: int, score: float, nms_iou: float) -> nanodet.Detections:
        return nanodet.nms(self.decoder.decode(self.run(x), self.matched, score, w, h), nms_iou)


def above(d: nanodet.Detections, score: float) -> nanodet.Detections:
    # Greedy NMS only lets a box suppress lower-scored ones, so NMS at a lower threshold followed by this cut
    # keeps exactly what NMS at the higher threshold would have kept.
    keep = d.scores >= score
    return nanodet.Detections(d.boxes[keep], d.scores[keep])


def greedy_matches(ref: nanodet.Detections, cand: nanodet.Detections, iou: float) -> int:
    if len(ref.scores) == 0 or len(cand.scores) == 0:
        return 0
    ious = nanodet.iou_matrix(cand.boxes, ref.boxes)
    taken = np.zeros(len(ref.scores), bool)
    hits = 0
    for i in np.argsort(-cand.scores, kind="stable"):
        row = np.where(taken, -1.0, ious[i])
        j = int(np.argmax(row))
        if row[j] >= iou:
            taken[j] = True
            hits += 1
    return hits


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--reference", required=True, help="manifest name of the reference model")
    ap.add_argument("--candidate", required=True, help="manifest name of the model under test")
    ap.add_argument("--reference-model", type=Path, required=True)
    ap.add_argument("--candidate-model", type=Path, required=True)
    ap.add_argument("--footage", type=Path, required=True)
    ap.add_argument("--score", type=float, default=0.5)
    ap.add_argument("--nms-iou", type=float, default=0.5)
    ap.add_argument("--match-iou", type=float, default=0.5)
    ap.add_argument("--margin", type=float, default=0.05, help="score slack for the *_with_margin figures")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    load_at_start = os.getloadavg()
    manifest = nanodet.load_manifest(args.manifest)
    ref_entry = nanodet.model_entry(manifest, args.reference)
    cand_entry = nanodet.model_entry(manifest, args.candidate)
    if ref_entry["input"] != cand_entry["input"]:
        raise SystemExit("evaluate: the two models want different inputs; this comparison assumes one pre-processing")
    prep = nanodet.Preprocess(ref_entry["input"])
    ref = Runner(args.reference_model, ref_entry, args.threads)
    cand = Runner(args.candidate_model, cand_entry, args.threads)

    low = args.score - args.margin
    n_ref = n_cand = hits = frames = hits_ref_margin = hits_cand_margin = 0
    for frame in nanodet.read_frames(args.footage):
        h, w = frame.shape[:2]
        x = prep(frame)
        dr_low = ref.detect(x, w, h, low, args.nms_iou)
        dc_low = cand.detect(x, w, h, low, args.nms_iou)
        dr, dc = above(dr_low, args.score), above(dc_low, args.score)
        n_ref += len(dr.scores)
        n_cand += len(dc.scores)
        hits += greedy_matches(dr, dc, args.match_iou)
        hits_ref_margin += greedy_matches(dr, dc_low, args.match_iou)
        hits_cand_margin += greedy_matches(dr_low, dc, args.match_iou)
        frames += 1
    del ref, cand

    # Timed separately, one session alive at a time: ONNX Runtime's workers spin for a moment after each run,
    # and on two cores an idle session's spinning thread would eat into the other session's time.
    timings = {}
    for label, path, entry in (("reference", args.reference_model, ref_entry),
                               ("candidate", args.candidate_model, cand_entry)):
        r = Runner(path, entry, args.threads)
        for k, frame in enumerate(nanodet.read_frames(args.footage)):
            x = prep(frame)
            if k == 0:
                for _ in range(args.warmup):
                    r.run(x, timed=False)
            r.run(x)
        timings[label] = r
        del r

    def speed(r: Runner) -> dict:
        t = sorted(r.times_ms)
        return {"median_ms": statistics.median(t), "p10_ms": t[len(t) // 10], "p90_ms": t[(9 * len(t)) // 10],
                "fps_at_median": 1000.0 / statistics.median(t)}

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_at_start": load_at_start,
                    "load_average_at_end": os.getloadavg()},
        "onnxruntime": ort.__version__,
        "footage": args.footage.name,
        "frames": frames,
        "settings": {"score": args.score, "nms_iou": args.nms_iou, "match_iou": args.match_iou,
                     "intra_op_threads": args.threads, "class": "person"},
        "reference": {"model": args.reference, "detections": n_ref, **speed(timings["reference"])},
        "candidate": {"model": args.candidate, "detections": n_cand, **speed(timings["candidate"])},
        "matched": hits,
        "recall": hits / n_ref if n_ref else float("nan"),
        "precision": hits / n_cand if n_cand else float("nan"),
        # The same with the other model allowed down to score - margin: what remains is disagreement about
        # people, not about which side of the threshold a borderline score falls.
        "margin": args.margin,
        "recall_with_margin": hits_ref_margin / n_ref if n_ref else float("nan"),
        "precision_with_margin": hits_cand_margin / n_cand if n_cand else float("nan"),
    }
    result["speedup"] = result["reference"]["median_ms"] / result["candidate"]["median_ms"]
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
