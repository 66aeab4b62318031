"""Produce the int8 variant of a float ONNX detector by onnxruntime static quantisation.

    python quantize.py --manifest manifest.toml --model NAME --fp32 IN.onnx --footage CLIP --out OUT.onnx

Runs inside the throwaway tools environment (see requirements-tools.txt). NAME is the int8 model's entry in the
manifest; its [model.quantize] table says how, its [model.input] how calibration frames are prepared.

Two things here are not plain `quantize_static`:

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


def output_convs(model: onnx.ModelProto) -> list[str]:
    """The last convolution on every path to a graph output: the layers that produce the raw head logits."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    found: list[str] = []
    seen: set[str] = set()
    todo = [o.name for o in g.output]
    while todo:
        t = todo.pop()
        node = producer.get(t)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == "Conv":
            found.append(node.name)
        else:
            todo.extend(node.input)
    return sorted(found)


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
    # float32 -> Python float is exact and json writes the shortest repr that reads back to the same double,
    # so the table round-trips bit for bit.
    # One tensor a line keeps a recalibration reviewable as a diff.
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
    log(f"calibration on this machine vs the committed table: largest deviation {worst:.2e} of a range ({worst_name})")
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
    frames = list(nanodet.read_frames(footage))
    picks = nanodet.spread(len(frames), count)
    return [prep(frames[i]) for i in picks], [(frames[i].shape[1], frames[i].shape[0]) for i in picks]


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def dec_in(sess: ort.InferenceSession) -> str:
    return sess.get_inputs()[0].name


def check_against_float(fp32: Path, int8: Path, model: dict, tensors: list[np.ndarray], sizes: list) -> None:
    """Refuse an int8 model that has lost the plot (the -inf trap gives zero detections, not slightly fewer)."""
    dec = nanodet.Decoder(model["input"], model["decoder"])
    a, b = session(fp32), session(int8)
    ma = dec.match_outputs({o.name: o.shape for o in a.get_outputs()})
    mb = dec.match_outputs({o.name: o.shape for o in b.get_outputs()})
    ref = hit = 0
    for x, (w, h) in zip(tensors, sizes):
        da = nanodet.nms(dec.decode(dict(zip([o.name for o in a.get_outputs()], a.run(None, {dec_in(a): x}))),
                                    ma, 0.5, w, h), 0.5)
        db = nanodet.nms(dec.decode(dict(zip([o.name for o in b.get_outputs()], b.run(None, {dec_in(b): x}))),
                                    mb, 0.5, w, h), 0.5)
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
    digest = nanodet.tensors_digest(tensors)
    log(f"{len(tensors)} calibration frames from {args.footage.name}, sha256 of the input tensors {digest}")
    if q.get("calibration_sha256") and digest != q["calibration_sha256"]:
        raise SystemExit(
            "quantize: the calibration frames differ from the ones the manifest pins\n"
            f"  expected: {q['calibration_sha256']}\n  found:    {digest}\n"
            "The video decoder or the resize in this environment produced other pixels; the int8 model would "
            "not match its pinned sha256 either."
        )

    fp32 = onnx.load(str(args.fp32))
    exclude = nonfinite_nodes(fp32)
    log(f"kept in float (read a non-finite constant, or read what such a node produced): {exclude}")
    if q["float_head"]:
        heads = output_convs(fp32)
        log(f"kept in float (last convolution before an output): {heads}")
        exclude += [h for h in heads if h not in exclude]

    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    with tempfile.TemporaryDirectory(prefix="lpmesh-quant-") as tmp_s:
        tmp = Path(tmp_s)
        calibrator = create_calibrator(args.fp32, op_types, augmented_model_path=str(tmp / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        calibrator.collect_data(Frames(prep.name, tensors))
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
            str(args.fp32),
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
        check_against_float(args.fp32, out_tmp, model, tensors, sizes)
        args.out.write_bytes(out_tmp.read_bytes())
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
