"""Reading the two profiles `profile_step.py` takes: TensorFlow's trace summed by op type and
part of a step, and oneDNN's verbose lines summed by kernel. No flags: tests import it."""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import time

# The parts of a step, by TensorFlow op type (oneDNN's `_Mkl*` / `_MklNative*` names included by
# stripping the prefix). Anything else is "other".
PARTS = {
    "convolution forward": ("Conv2D", "FusedConv2D", "DepthwiseConv2dNative", "PadWithConv2D", "PadWithFusedConv2D"),
    "convolution data gradient": ("Conv2DBackpropInput", "DepthwiseConv2dNativeBackpropInput"),
    "convolution weight gradient": (
        "Conv2DBackpropFilter",
        "Conv2DBackpropFilterWithBias",
        "DepthwiseConv2dNativeBackpropFilter",
    ),
    "batch norm forward": ("FusedBatchNormV3", "FusedBatchNormEx"),
    "batch norm backward": ("FusedBatchNormGradV3", "FusedBatchNormGradEx"),
    "ReLU forward / backward": ("Relu", "ReluGrad"),
    "pooling": ("MaxPool", "MaxPoolGrad", "AvgPool", "AvgPoolGrad", "Mean"),
    "dense": ("MatMul", "BiasAdd", "BiasAddGrad", "FusedMatMul"),
    "layout and dtype conversions": ("Transpose", "Cast", "MklToTf", "ToTf", "Pad"),
    "optimizer update": (
        "ResourceApplyKerasMomentum",
        "ResourceApplyMomentum",
        "ResourceApplyGradientDescent",
        "AssignVariableOp",
        "AssignSubVariableOp",
        "AssignAddVariableOp",
    ),
}
_PART_OF = {op: part for part, ops in PARTS.items() for op in ops}


def op_part(op_type: str) -> str:
    """The part of a step an op type belongs to."""
    base = re.sub(r"^_Mkl(Native)?", "", op_type).lstrip("_")
    return _PART_OF.get(base, "other (element-wise, loss, reads)")


def trace_ops(step, steps: int) -> tuple[dict, float]:
    """Traces `steps` calls of `step` with TensorFlow's profiler; returns the summed duration in
    ms of each op type's executions on the host, and the traced wall time in ms."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=2, python_tracer_level=0)
        tf.profiler.experimental.start(logdir, options=options)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        traced_ms = (time.perf_counter() - start) * 1e3
        tf.profiler.experimental.stop()
        files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        if not files:
            raise RuntimeError(f"TensorFlow's profiler wrote no trace under {logdir}")
        space = xplane_pb2.XSpace()
        with open(files[0], "rb") as f:
            space.ParseFromString(f.read())
    totals: dict[str, float] = collections.defaultdict(float)
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            for event in line.events:
                metadata = plane.event_metadata[event.metadata_id]
                # A TensorFlow op's event is named "<node name>:<op type>", its display name the type.
                if metadata.display_name and metadata.name.endswith(":" + metadata.display_name):
                    totals[metadata.display_name] += event.duration_ps / 1e9
    return dict(totals), traced_ms


_SHAPE = re.compile(r"(mb|g|ic|oc|ih|oh|kh|iw|ow|kw|id|od|kd)(\d+)")


def convolution_macs(descriptor: str) -> int:
    """Multiply-accumulates of one convolution from its oneDNN shape descriptor
    (`mb32_ic64oc64_ih56oh56kh3sh1dh0ph1_iw56ow56kw3sw1dw0pw1`; the w part may be left out
    when it equals h, and `g<n>` gives groups)."""
    dims = {key: int(value) for key, value in _SHAPE.findall(descriptor)}
    for h, w in (("ih", "iw"), ("oh", "ow"), ("kh", "kw")):
        dims.setdefault(w, dims.get(h, 1))
    groups = dims.get("g", 1)
    return (
        dims.get("mb", 1)
        * dims["oc"]
        * dims["oh"]
        * dims["ow"]
        * dims.get("od", 1)
        * dims["ic"]
        // groups
        * dims["kh"]
        * dims["kw"]
        * dims.get("kd", 1)
    )


def summarize_onednn(lines, steps: int) -> dict:
    """Sums oneDNN's verbose `exec` lines by (primitive kind, direction, implementation):
    executions and ms per step, and for convolutions the MACs per step and GFLOP/s."""
    groups: dict[tuple, dict] = {}
    for line in lines:
        fields = line.strip().split(",")
        if not fields[0].endswith("_verbose") or "exec" not in fields[:4]:
            continue
        at = fields.index("exec")
        try:
            kind, implementation, direction = fields[at + 2], fields[at + 3], fields[at + 4]
            ms = float(fields[-1])
        except (IndexError, ValueError):
            continue
        entry = groups.setdefault((kind, direction, implementation), {"calls": 0, "ms": 0.0, "macs": 0})
        entry["calls"] += 1
        entry["ms"] += ms
        if kind == "convolution":
            entry["macs"] += convolution_macs(fields[-2])
    rows = []
    for (kind, direction, implementation), entry in groups.items():
        row = {
            "kind": kind,
            "direction": direction,
            "implementation": implementation,
            "calls_per_step": entry["calls"] / steps,
            "ms_per_step": round(entry["ms"] / steps, 2),
        }
        if entry["macs"]:
            row["gflops"] = round(2 * entry["macs"] / (entry["ms"] / 1e3) / 1e9, 1)
        rows.append(row)
    return {"kernels": sorted(rows, key=lambda row: -row["ms_per_step"])}
