"""Rewrite a converted ONNX graph into a canonical form, so that the same network always gives the same bytes.

    python canonicalize.py RAW.onnx OUT.onnx --doc "where it came from"

Runs inside the throwaway tools environment (onnx, onnxruntime, numpy; see requirements-tools.txt).

tf2onnx does not produce identical files from identical inputs: its generated names carry global counters whose
values depend on the order in which it happens to visit nodes, the order of nodes it emits among independent
branches varies between runs, and it writes the path of the input file into the graph's doc string. The network
computed is the same every time; only the spelling differs. This script spells it one way:

- nodes are ordered by a depth-first walk from the graph outputs (taken in name order) through each node's inputs
  in their positional order, which depends on the structure of the graph only;
- every node and every intermediate tensor is renamed after its position in that order, and initializers after
  the order in which that walk first uses them; graph input and output names are kept, since callers use them;
- output shapes are made concrete by running the model once: the converter leaves them symbolic because the
  head's reshapes take their shapes from arithmetic on constants, which ONNX shape inference cannot follow, and
  concrete shapes let a runtime match outputs by shape without running the model first.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper


def walk_order(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    producer = {}
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            # Subgraphs would need their own renaming scope; NanoDet has none, so refuse rather than half-do it.
            raise SystemExit(f"canonicalize: node {node.name} ({node.op_type}) has a subgraph; not supported")
        for out in node.output:
            if out:
                producer[out] = node
    order: list[onnx.NodeProto] = []
    done: set[int] = set()
    # An explicit stack instead of recursion: converted graphs can be deeper than Python's recursion limit.
    for root in sorted(o.name for o in graph.output):
        stack = [(producer[root], 0)] if root in producer else []
        while stack:
            node, i = stack.pop()
            if id(node) in done:
                continue
            inputs = [x for x in node.input if x in producer]
            if i < len(inputs):
                stack.append((node, i + 1))
                child = producer[inputs[i]]
                if id(child) not in done:
                    stack.append((child, 0))
                continue
            done.add(id(node))
            order.append(node)
    return order


def canonicalize(model: onnx.ModelProto, doc: str) -> onnx.ModelProto:
    g = model.graph
    order = walk_order(g)
    dropped = len(g.node) - len(order)
    if dropped:
        print(f"canonicalize: dropping {dropped} node(s) that no output depends on", file=sys.stderr)

    keep = {i.name for i in g.input} | {o.name for o in g.output}
    inits = {t.name: t for t in g.initializer}
    rename: dict[str, str] = {"": ""}
    for name in keep:
        rename[name] = name
    used_inits: list[onnx.TensorProto] = []
    for k, node in enumerate(order):
        for x in node.input:
            if x in inits and x not in rename:
                rename[x] = f"const_{len(used_inits)}"
                used_inits.append(inits[x])
        for j, out in enumerate(node.output):
            if out not in rename:
                rename[out] = f"{node.op_type}_{k}:{j}"

    nodes = []
    for k, node in enumerate(order):
        n = onnx.NodeProto()
        n.CopyFrom(node)
        n.name = f"{node.op_type}_{k}"
        n.ClearField("doc_string")
        del n.input[:]
        n.input.extend(rename[x] for x in node.input)
        del n.output[:]
        n.output.extend(rename[x] for x in node.output)
        nodes.append(n)

    new_inits = []
    for t in used_inits:
        c = onnx.TensorProto()
        c.CopyFrom(t)
        c.name = rename[t.name]
        new_inits.append(c)

    outputs = sorted(g.output, key=lambda o: o.name)
    graph = helper.make_graph(nodes, g.name, list(g.input), list(outputs), new_inits, doc_string=doc)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.CopyFrom(graph)
    out.ClearField("metadata_props")
    return out


def set_output_shapes(model: onnx.ModelProto) -> None:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        if not all(isinstance(d, int) for d in i.shape):
            raise SystemExit(f"canonicalize: input {i.name} has a symbolic shape {i.shape}; cannot fix output shapes")
        feeds[i.name] = np.zeros(i.shape, dtype=np.float32)
    names = [o.name for o in sess.get_outputs()]
    results = dict(zip(names, sess.run(names, feeds)))
    for o in model.graph.output:
        shape = o.type.tensor_type.shape
        shape.ClearField("dim")
        for d in results[o.name].shape:
            shape.dim.add().dim_value = int(d)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("out")
    ap.add_argument("--doc", required=True, help="doc string for the graph (replaces the converter's)")
    args = ap.parse_args()
    model = canonicalize(onnx.load(args.raw), args.doc)
    set_output_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, args.out)
    for o in model.graph.output:
        print(f"canonicalize: output {o.name} {[d.dim_value for d in o.type.tensor_type.shape.dim]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
