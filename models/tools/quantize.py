"""Produce the int8 variant of a float ONNX detector by onnxruntime static quantisation.

    python quantize.py --manifest manifest.toml --model NAME --fp32 IN.onnx --footage CLIP --out OUT.onnx

Runs inside the throwaway tools environment (see requirements-tools.txt). NAME is the int8 model's entry in the
manifest; its [model.quantize] table says how, its [model.input] how calibration frames are prepared.

The recipe is onnxruntime's own (`quant_pre_process`, then `quantize_static`), with these additions:

- Nodes that read a non-finite constant are kept in float, with the nodes that consume their output. The converted
  NanoDet pads with -inf in front of its first MaxPool (TensorFlow's "SAME" max-pool padding); calibrating that
  tensor gives an infinite range, and a model quantised with it scores ~0 everywhere. Looking for the constant,
  not a node name, keeps this working when the converter renames things.
- The calibration ranges that go into the model come from a table committed next to the manifest
  (`calibration_ranges`), not straight from this run. Calibration still runs on every build and must agree with
  the table to within `calibration_tolerance` of each tensor's range. The raw min/max come out of float inference
  whose last bits depend on the CPU's kernels (AVX2, AVX-512 and NEON accumulate in different orders); quantising
  with the table instead keeps the int8 file, and so its pinned sha256, the same on every machine, while the
  comparison still catches a changed model or changed frames. `--write-ranges` writes a new table.
- With `keep_float = ["head"]`, the detection head stays in float: for every graph output, the nearest Conv
  upstream of it and every node between that Conv and the output (found by walking back along each node's first
  input, so by graph structure, not by name). Quantised, the shared score/box Conv has one uint8 scale for both
  (~0.09 per logit step, ~0.02 score steps near 0.5), and the score ranges of levels that saw no person during
  calibration clip at the largest score seen there.
- `calibration_zoom_crops` adds crops of the footage cut at each zoom in `calibration_zooms` (2x: half the frame's
  width and height), so the coarse levels (stride 16/32) see people as large as they are near a camera. A clip of
  small people alone calibrates those levels' tensors too narrow, and the int8 model then misses large people.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import TensorData, create_calibrator, save_tensors_data
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

import nanodet


def log(msg: str) -> None:
    print(f"[quantize] {msg}", flush=True)


def nonfinite_nodes(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    bad: set[str] = set()
    for t in g.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            bad.add(t.name)
    for n in g.node:
        if n.op_type == "Constant":
            for attr in n.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    a = numpy_helper.to_array(attr.t)
                    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
                        bad.update(n.output)
    readers = [n for n in g.node if n.op_type != "Constant" and any(x in bad for x in n.input)]
    # Whatever reads their output sees the non-finite values too (the padded border), so it stays float as well.
    tainted = {o for n in readers for o in n.output}
    consumers = [n for n in g.node if any(x in tainted for x in n.input)]
    names = []
    for n in readers + consumers:
        if n.name not in names:
            names.append(n.name)
    return names


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """The nearest Conv upstream of each graph output, and every node from it to the output.

    Walks back from each output along the first input of each producer (the data input of Transpose, Reshape,
    Sigmoid, Split) until it reaches a Conv. By structure, so it survives the converter renaming nodes.
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    names: list[str] = []
    for out in g.output:
        t, path = out.name, []
        while t in producer:
            n = producer[t]
            path.append(n.name)
            if n.op_type == "Conv":
                break
            t = n.input[0] if n.input else None
        else:
            raise SystemExit(f"quantize: no Conv upstream of output {out.name}")
        names += [p for p in path if p not in names]
    return names


def finite_ranges(ranges) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name in sorted(ranges.keys()):
        lo, hi = (np.asarray(v, dtype=np.float32) for v in ranges[name].range_value)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            # Only tensors that stay float may have such a range. Leaving it out of the table means that if
            # anything did want it, quantize_static would fail loudly instead of using an infinite scale.
            log(f"leaving out the non-finite calibration range of {name}: [{lo.ravel()}, {hi.ravel()}]")
            continue
        out[name] = (lo, hi)
    return out


def write_ranges(path: Path, table: dict) -> None:
    # float32 -> Python float is exact, and json writes the shortest repr that reads back to the same double, so
    # the table round-trips bit for bit. One tensor a line keeps a recalibration reviewable as a diff.
    lines = [f"{json.dumps(name)}: {json.dumps([lo.tolist(), hi.tolist()])}" for name, (lo, hi) in sorted(table.items())]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def read_ranges(path: Path) -> dict:
    if not path.exists():
        raise SystemExit(f"quantize: calibration table {path} is missing (write one with `build.py calibrate`)")
    doc = json.loads(path.read_text())
    return {name: (np.asarray(lo, dtype=np.float32), np.asarray(hi, dtype=np.float32)) for name, (lo, hi) in doc.items()}


def compare_ranges(computed: dict, table: dict, tolerance: float) -> None:
    """Check this machine's calibration against the committed table, relative to each tensor's range width."""
    if computed.keys() != table.keys():
        missing, extra = sorted(table.keys() - computed.keys()), sorted(computed.keys() - table.keys())
        raise SystemExit(f"quantize: calibrated tensors differ from the table: missing {missing}, extra {extra}")
    worst, worst_name = 0.0, ""
    for name, (lo, hi) in computed.items():
        tlo, thi = table[name]
        width = np.maximum(thi - tlo, np.float32(1e-12))
        dev = float(np.max(np.maximum(np.abs(lo - tlo), np.abs(hi - thi)) / width))
        if dev > worst:
            worst, worst_name = dev, name
    where = f" ({worst_name})" if worst_name else ""
    log(f"calibration on this machine vs the committed table: largest deviation {worst:.2e} of a range{where}")
    if worst > tolerance:
        raise SystemExit(
            f"quantize: this machine's calibration differs from the committed table by {worst:.2e} of a range "
            f"(tolerance {tolerance}) at {worst_name}.\nThe frames or the float model changed; if that is intended, "
            "rebuild the table with `python3 models/build.py calibrate` and pin the new sha256s."
        )


class Frames(CalibrationDataReader):
    def __init__(self, name: str, tensors: list[np.ndarray]):
        self.name = name
        self.tensors = tensors
        self.i = 0

    def get_next(self):
        if self.i >= len(self.tensors):
            return None
        self.i += 1
        return {self.name: self.tensors[self.i - 1]}

    def __len__(self):
        return len(self.tensors)


def calibration_tensors(footage: Path, prep: nanodet.Preprocess, count: int) -> tuple[list[np.ndarray], list]:
    # Counted by decoding rather than from the container's header, which need not be right; two passes keep
    # only the chosen frames in memory.
    total = sum(1 for _ in nanodet.read_frames(footage))
    picks = set(nanodet.spread(total, count))
    tensors, sizes = [], []
    for i, frame in enumerate(nanodet.read_frames(footage)):
        if i in picks:
            tensors.append(prep(frame))
            sizes.append((frame.shape[1], frame.shape[0]))
    return tensors, sizes


def zoom_crops(footage: Path, prep: nanodet.Preprocess, count: int, zooms: list[float]) -> tuple[list[np.ndarray], list]:
    """`count` crops, frames spread over the clip (offset from the full-frame picks), zoom cycling through `zooms`.

    Crop origins follow the golden-ratio sequence (plain float64 arithmetic, the same on every machine); the
    crop keeps the frame's aspect ratio and is resized by `prep` exactly as a full frame is.
    """
    total = sum(1 for _ in nanodet.read_frames(footage))
    picks = {}
    for k, i in enumerate(nanodet.spread(total, count)):
        picks.setdefault(min(i + total // (2 * count), total - 1), []).append(k)
    phi = (5 ** 0.5 - 1) / 2
    tensors, sizes = [], []
    for i, frame in enumerate(nanodet.read_frames(footage)):
        for k in picks.get(i, []):
            z = zooms[k % len(zooms)]
            h, w = frame.shape[:2]
            cw, ch = int(w / z), int(h / z)
            x0 = int(((k + 1) * phi % 1.0) * (w - cw))
            y0 = int(((k + 1) * phi * phi % 1.0) * (h - ch))
            tensors.append(prep(frame[y0:y0 + ch, x0:x0 + cw]))
            sizes.append((cw, ch))
    return tensors, sizes


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def drop_unused_opsets(path: Path) -> None:
    """Remove opset imports no node uses.

    ONNX Runtime's pre-processing saves the model with every domain it knows imported (com.microsoft.nchwc,
    org.pytorch.aten, ...). Nothing here uses them, and other runtimes (vendor NPU builds among them) may refuse a
    domain they do not know.
    """
    m = onnx.load(str(path))
    used = {n.domain for n in m.graph.node} | {""}
    keep = [o for o in m.opset_import if o.domain in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def check_against_float(fp32: Path, int8: Path, model: dict, tensors: list[np.ndarray], sizes: list) -> None:
    """Refuse an int8 model that has lost the plot (the -inf trap gives zero detections, not slightly fewer)."""
    dec = nanodet.Decoder(model["input"], model["decoder"])

    def detector(path: Path):
        sess = session(path)
        names = [o.name for o in sess.get_outputs()]
        matched = dec.match_outputs({o.name: o.shape for o in sess.get_outputs()})
        feed = sess.get_inputs()[0].name
        return lambda x, w, h: nanodet.nms(
            dec.decode(dict(zip(names, sess.run(names, {feed: x}))), matched, 0.5, w, h), 0.5)

    float_det, int8_det = detector(fp32), detector(int8)
    ref = hit = 0
    for x, (w, h) in zip(tensors, sizes):
        da, db = float_det(x, w, h), int8_det(x, w, h)
        ref += len(da.scores)
        if len(da.scores) and len(db.scores):
            hit += int((nanodet.iou_matrix(da.boxes, db.boxes).max(axis=1) >= 0.5).sum())
    recall = hit / ref if ref else 0.0
    log(f"sanity check on the calibration frames: {ref} float detections, int8 finds {recall:.1%} of them")
    if ref == 0 or recall < 0.9:
        raise SystemExit("quantize: the int8 model does not reproduce the float model's detections; not installing it")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--fp32", type=Path, required=True)
    ap.add_argument("--footage", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--write-ranges", type=Path, help="write a new calibration table here instead of checking it")
    args = ap.parse_args()

    model = nanodet.model_entry(nanodet.load_manifest(args.manifest), args.model)
    q = model["quantize"]
    if (q["format"], q["calibrate_method"]) != ("QDQ", "MinMax"):
        raise SystemExit(f"quantize: only QDQ with MinMax calibration is implemented, manifest asks {q}")
    prep = nanodet.Preprocess(model["input"])

    tensors, sizes = calibration_tensors(args.footage, prep, q["calibration_frames"])
    if q.get("calibration_zoom_crops", 0):
        crops, crop_sizes = zoom_crops(args.footage, prep, q["calibration_zoom_crops"], q["calibration_zooms"])
        tensors, sizes = tensors + crops, sizes + crop_sizes
    digest = nanodet.tensors_digest(tensors)
    log(f"{len(tensors)} calibration frames (zoomed crops included) from {args.footage.name}, sha256 of the input tensors {digest}")
    if q.get("calibration_sha256") and digest != q["calibration_sha256"]:
        raise SystemExit(
            "quantize: the calibration frames differ from the ones the manifest pins\n"
            f"  expected: {q['calibration_sha256']}\n  found:    {digest}\n"
            "The video decoder or the resize in this environment produced other pixels; the int8 model would "
            "not match its pinned sha256 either."
        )

    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    with tempfile.TemporaryDirectory(prefix="lpmesh-quant-") as tmp_s:
        tmp = Path(tmp_s)
        src = args.fp32
        if q["pre_process"]:
            # ONNX Runtime's own preparation (shape inference, basic graph fusions). It folds the converter's
            # zero-padding Pads into the convolutions that follow them; left in, each of those 28 Pads would sit
            # between a DequantizeLinear and a QuantizeLinear and run in float, costing about a third of the
            # int8 speed-up. Symbolic shape inference is skipped: every shape here is fixed (and it needs sympy).
            src = tmp / "pre.onnx"
            quant_pre_process(str(args.fp32), str(src), skip_symbolic_shape=True)
        graph = onnx.load(str(src))
        exclude = nonfinite_nodes(graph)
        log(f"kept in float (read a non-finite constant, or read what such a node produced): {exclude}")
        unknown = set(q.get("keep_float", [])) - {"head"}
        if unknown:
            raise SystemExit(f"quantize: keep_float knows only \"head\", manifest asks {sorted(unknown)}")
        if "head" in q.get("keep_float", []):
            head = [n for n in head_nodes(graph) if n not in exclude]
            log(f"kept in float (detection head, last Conv to the outputs): {head}")
            exclude += head

        calibrator = create_calibrator(src, op_types, augmented_model_path=str(tmp / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        # In batches: the MinMax calibrator keeps every intermediate tensor of what it is given until it reduces
        # them. Reducing per batch and merging min/max gives the same ranges as one pass (bit for bit).
        for i in range(0, len(tensors), 25):
            calibrator.collect_data(Frames(prep.name, tensors[i:i + 25]))
        ranges = calibrator.compute_data()
        del calibrator
        computed = finite_ranges(ranges)
        if args.write_ranges:
            write_ranges(args.write_ranges, computed)
            log(f"wrote the calibration table {args.write_ranges}; pin the new sha256s in the manifest")
            table = computed
        else:
            table = read_ranges(args.manifest.parent / q["calibration_ranges"])
            compare_ranges(computed, table, q["calibration_tolerance"])
        for name in list(ranges.keys()):
            if name not in table:
                del ranges.data[name]
            else:
                lo, hi = table[name]
                ranges[name] = TensorData(lowest=lo, highest=hi)
        cache = tmp / "ranges.json"
        save_tensors_data(ranges, cache)

        out_tmp = tmp / args.out.name
        quantize_static(
            str(src),
            str(out_tmp),
            calibration_data_reader=None,
            calibration_cache_path=str(cache),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            per_channel=q["per_channel"],
            reduce_range=q["reduce_range"],
            activation_type=getattr(QuantType, q["activation_type"]),
            weight_type=getattr(QuantType, q["weight_type"]),
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
        )
        drop_unused_opsets(out_tmp)
        check_against_float(args.fp32, out_tmp, model, tensors, sizes)
        args.out.write_bytes(out_tmp.read_bytes())
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
