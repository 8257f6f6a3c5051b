"""Where a .tflite spends its time, op kind by op kind, without a profiler build of LiteRT:
every op is cut out into a model of its own and timed alone (speed_test.py --profile-ops)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..runners import tflite_interpreter
from ..tables import markdown_table
from ..timing import interleaved_rounds, time_calls, version_of
from .backends import INSTALL_HINT
from .model_stats import ModelStatsError

WARMUP = 5  # untimed calls of every single-op model before the rounds
TOTAL_ROW = "all ops, one by one"


def op_kind(name: str, weight_shape: tuple) -> str:
    """Op name, with convolutions told apart by kernel (a 3-channel 3x3 conv is the stem)."""
    if name != "CONV_2D" or len(weight_shape) != 4:
        return name
    kernel = "x".join(map(str, weight_shape[1:3]))
    return f"CONV_2D {kernel}" + (" stem" if weight_shape[3] <= 4 and kernel != "1x1" else "")


def single_op_models(path: Path) -> list[tuple[str, bytes]]:
    """Every op of a .tflite as a model of its own, constants kept: (kind, model bytes).

    Unused weight buffers are dropped, so each model stays small.
    """
    try:
        from ai_edge_litert.tools import flatbuffer_utils
        model = flatbuffer_utils.read_model(str(path))
    except ImportError:
        raise ModelStatsError(f"profiling TFLite needs LiteRT ({INSTALL_HINT['litert']})") from None
    except Exception as err:
        raise ModelStatsError(f"cannot read {path} as TFLite "
                              f"({(str(err).splitlines() or ['?'])[0][:100]})") from None
    graph = model.subgraphs[0]
    operators, data = graph.operators, [b.data for b in model.buffers]
    out = []
    try:
        for op in operators:
            tensors = [int(t) for t in op.inputs if t >= 0]
            constant = {t for t in tensors if data[graph.tensors[t].buffer] is not None
                        and len(data[graph.tensors[t].buffer])}
            used = {graph.tensors[t].buffer for t in constant}
            for index, buffer in enumerate(model.buffers):
                buffer.data = data[index] if index in used else None
            graph.operators = [op]
            graph.inputs = np.array([t for t in tensors if t not in constant], np.int32)
            graph.outputs = np.array([int(t) for t in op.outputs], np.int32)
            weights = tuple(graph.tensors[tensors[1]].shape) if len(tensors) > 1 else ()
            out.append((op_kind(flatbuffer_utils.opcode_to_name(model, op.opcodeIndex), weights),
                        bytes(flatbuffer_utils.convert_object_to_bytearray(model))))
    finally:
        graph.operators = operators
        for buffer, original in zip(model.buffers, data):
            buffer.data = original
    return out


def profile_ops(paths: list[Path], threads: int, repeat: int, iters: int) -> list[str]:
    """Median ms of every op run alone (XNNPACK as in a normal run), summed by op kind, the
    models interleaved round by round; a markdown table (with two models, their ratio)."""
    samples: dict[Path, list[list[float]]] = {}
    kinds: dict[Path, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="scrfd_op_profile_") as folder:
        interpreters: dict[Path, list] = {}
        for model_index, path in enumerate(paths):
            kinds[path], interpreters[path] = [], []
            for op_index, (kind, content) in enumerate(single_op_models(path)):
                op_file = Path(folder) / f"{model_index}_{op_index}.tflite"
                op_file.write_bytes(content)
                interpreter = tflite_interpreter(op_file, threads)
                interpreter.allocate_tensors()
                for detail in interpreter.get_input_details():
                    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
                for _ in range(WARMUP):
                    interpreter.invoke()
                kinds[path].append(kind)
                interpreters[path].append(interpreter)
            samples[path] = [[] for _ in interpreters[path]]

        def time_model(path: Path) -> None:
            for index, interpreter in enumerate(interpreters[path]):
                samples[path][index] += time_calls(interpreter.invoke, iters)[0]

        interleaved_rounds(paths, repeat, time_model)
    return op_table(paths, kinds, samples, threads, repeat, iters)


def op_table(paths: list[Path], kinds: dict[Path, list[str]], samples: dict[Path, list[list[float]]],
             threads: int, repeat: int, iters: int) -> list[str]:
    """Count and summed median ms per op kind and model, slowest kind first, then the total."""
    totals: dict[str, dict[Path, list]] = {}
    for path in paths:
        for kind, times in zip(kinds[path], samples[path]):
            entry = totals.setdefault(kind, {}).setdefault(path, [0, 0.0])
            entry[0] += 1
            entry[1] += float(np.median(times)) * 1e3
    order = sorted(totals, key=lambda k: -max(v[1] for v in totals[k].values()))
    totals[TOTAL_ROW] = {path: [sum(totals[k].get(path, [0, 0.0])[i] for k in order)
                                for i in (0, 1)] for path in paths}
    ratio = len(paths) == 2
    rows = []
    for kind in order + [TOTAL_ROW]:
        cells = [tuple(totals[kind].get(path, [0, 0.0])) for path in paths]
        row = [kind] + [f"{count} x, {ms:.2f}" for count, ms in cells]
        if ratio:
            row.append(f"{cells[1][1] / cells[0][1]:.2f}" if cells[0][1] > 0 and cells[1][0] else "-")
        rows.append(row)
    header = ["Op"] + [f"{p.stem} (count, ms)" for p in paths] + (["ratio"] if ratio else [])
    return markdown_table(header, rows) + [
        "", f"Each op alone in its own model (LiteRT {version_of('ai-edge-litert')}, XNNPACK, "
            f"{threads} thread(s)), median of {repeat} rounds x {iters} calls, models interleaved; "
            "the sum is more than a whole-model run (no fusion across ops, a call overhead per op)."]
