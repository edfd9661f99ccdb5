"""TFLite side of benchmarks/profile_stages.py --tflite: one kdet stage function -> its own TFLite model, timed next
to the same stage run by TensorFlow, and which of its ops XNNPACK does not take.

    flatbuffer = stage_flatbuffer(fn, inputs, track=model)   # kdet's export settings: builtins-only trace + converter
    run, outputs = interpreter_stage(flatbuffer, inputs)     # zero-argument callable, as benchmarks/run_all.py's runner
    delegation(flatbuffer)                                   # {"ops": {...}, "not_delegated": {...}, "partitions": n}

A stage is converted the way kdet.export.tflite converts a model: traced inside `builtins_only()` (so it takes the
same twins as the exported model) and `xnnpack_layer_forms()`, written through keras.export.ExportArchive (which
freezes the Keras variables), converted by kdet.export.tflite's own converter (TFLITE_BUILTINS only), run by the
ai-edge-litert Interpreter with kdet.inference.runners.NUM_THREADS threads and its default delegate (XNNPACK)
through a signature runner, as the TFLite runner of `kdet benchmark` and run_all.py does. The model is the folded
inference copy (what the export converts); the TensorFlow contenders run the same folded model.
"""
import time
from pathlib import Path

import numpy as np


def flat_signature(inputs):
    """Nested stage inputs -> (flat list of tensors, TensorSpecs named x0, x1, ...)."""
    import tensorflow as tf
    flat = [tf.convert_to_tensor(x) for x in tf.nest.flatten(inputs)]
    return flat, [tf.TensorSpec(x.shape, x.dtype, name=f"x{i}") for i, x in enumerate(flat)]


def flat_function(fn, inputs):
    """fn(*inputs) -> a function of the flat inputs returning {"y0": ..., "y1": ...} (float outputs as float32)."""
    import tensorflow as tf

    def run(*flat):
        outputs = tf.nest.flatten(fn(*tf.nest.pack_sequence_as(inputs, list(flat))))
        return {f"y{i}": y for i, y in enumerate(outputs)}
    return run


def stage_flatbuffer(fn, inputs, track):
    """The builtins-only TFLite flatbuffer of fn(*inputs) (inputs' static shapes), converted as kdet exports.
    track: the Keras model (or layer) whose variables fn uses."""
    from kdet.export.tflite import function_flatbuffer
    _, specs = flat_signature(inputs)
    return function_flatbuffer(flat_function(fn, inputs), specs, track)


def interpreter(flatbuffer, threads=None, delegate=True):
    """The Interpreter the TFLite runner makes (NUM_THREADS, default delegates) or, delegate=False, without them."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from kdet.inference.runners import NUM_THREADS
    resolver = OpResolverType.AUTO if delegate else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(model_content=flatbuffer, num_threads=threads or NUM_THREADS,
                       experimental_op_resolver_type=resolver)


def interpreter_stage(flatbuffer, inputs, delegate=True):
    """(zero-argument callable running the stage's signature on `inputs` and copying its outputs out, as
    TFLiteRunner does; the outputs [y0, y1, ...] as numpy)."""
    flat, _ = flat_signature(inputs)
    feed = {f"x{i}": np.ascontiguousarray(x.numpy()) for i, x in enumerate(flat)}
    runner = interpreter(flatbuffer, delegate=delegate).get_signature_runner("serving_default")

    def call():
        return {k: np.copy(v) for k, v in runner(**feed).items()}
    outputs = call()
    return call, [outputs[f"y{i}"] for i in range(len(outputs))]


def max_difference(tf_outputs, tflite_outputs):
    """Largest |TF - TFLite| over the float outputs of equal shape (None if there are none); a stage whose
    outputs are ordered by score (top-k, NMS) may differ in order, so only shapes and float values are compared."""
    import tensorflow as tf
    worst = None
    for a, b in zip(tf.nest.flatten(tf_outputs), tflite_outputs):
        a = np.asarray(a)
        if a.shape == b.shape and a.dtype.kind == "f" and a.size:
            value = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            worst = value if worst is None else max(worst, value)
    return worst


def op_types(fn, inputs, builtins):
    """Sorted TF op types of fn's graph traced with (or without) the builtins-only twins."""
    import tensorflow as tf
    from kdet.ops.mode import builtins_only
    _, specs = flat_signature(inputs)
    with builtins_only(builtins):
        graph = tf.function(flat_function(fn, inputs)).get_concrete_function(*specs).graph
    types = set()
    for op in graph.get_operations():
        types.add(op.type)
        for function in graph._functions.values():  # noqa: SLF001  (nested functions: layer calls, while bodies)
            types.update(node.op for node in function.cached_definition.node_def)
    return sorted(types)


def delegation(flatbuffer):
    """Which ops of the (main) subgraph XNNPACK takes: {"ops": {op: count}, "not_delegated": {op: count},
    "partitions": number of XNNPACK partitions}. A DELEGATE node replaces the original nodes between its inputs and
    outputs: walking back from its outputs through their producers, stopping at its inputs, finds them."""
    it = interpreter(flatbuffer)
    it.allocate_tensors()
    details = it._get_ops_details()  # noqa: SLF001  (node list with inputs / outputs; no public API has it)
    producer = {}
    for node in details:
        if node["op_name"] != "DELEGATE":
            for tensor in node["outputs"]:
                producer[int(tensor)] = node["index"]
    delegated, partitions = set(), 0
    for node in details:
        if node["op_name"] != "DELEGATE":
            continue
        partitions += 1
        boundary, stack = {int(t) for t in node["inputs"]}, [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            index = producer.get(tensor)
            if tensor in boundary or index is None or index in delegated:
                continue
            delegated.add(index)
            stack.extend(int(t) for t in details[index]["inputs"] if int(t) >= 0)
    ops, missing = {}, {}
    for node in details:
        if node["op_name"] == "DELEGATE":
            continue
        ops[node["op_name"]] = ops.get(node["op_name"], 0) + 1
        if node["index"] not in delegated:
            missing[node["op_name"]] = missing.get(node["op_name"], 0) + 1
    return {"ops": dict(sorted(ops.items())), "not_delegated": dict(sorted(missing.items())),
            "partitions": partitions}


def tf_builtins_call(fn, inputs):
    """fn traced under builtins_only() (the graph TFLite converts), run by TensorFlow: a zero-argument callable."""
    import tensorflow as tf
    from kdet.ops.mode import builtins_only
    function = tf.function(fn)
    with builtins_only():
        function(*inputs)  # traces here; later calls reuse this trace
    return lambda: function(*inputs)


def stage_record(name, call, model, rounds, warmup):
    """One stage: convert, check, time {"tf", ["tf_builtins",] "tflite"} round-robin (reference "tf")."""
    from speed_common import round_robin
    start = time.perf_counter()
    flatbuffer = stage_flatbuffer(call.fn, call.inputs, model)
    convert_seconds = time.perf_counter() - start
    run, outputs = interpreter_stage(flatbuffer, call.inputs)
    contenders = {"tf": call, "tflite": run}
    twins = op_types(call.fn, call.inputs, True) != op_types(call.fn, call.inputs, False)
    if twins:  # the TFLite graph has builtins-only twins: also time that graph in TensorFlow
        contenders["tf_builtins"] = tf_builtins_call(call.fn, call.inputs)
    timing = round_robin(contenders, rounds=rounds, warmup=warmup, reference="tf")
    return {"convert_seconds": round(convert_seconds, 1), "flatbuffer_mb": round(len(flatbuffer) / 2 ** 20, 2),
            "max_difference_tf_tflite": max_difference(call(), outputs), "builtins_twins": twins,
            "xnnpack": delegation(flatbuffer), **timing}


def end_to_end(kdet, directory, rounds, warmup):
    """The whole model: kdet's real TFLite export (TFLiteRunner; "tflite" with a dynamic batch, the default,
    "tflite_batch1" exported with batch_size=1) vs tf.function(detect) of the folded model ("tf") and of the
    unfolded one ("keras", run_all.py's kdet_keras for Faster R-CNN / FCN)."""
    import tensorflow as tf
    from kdet.export.tflite import export_tflite
    from kdet.inference.runners import load_runner
    from speed_common import round_robin
    image = np.asarray(kdet["image"], np.uint8)
    path = export_tflite(kdet["unfolded"], Path(directory) / "profile_tflite_model.tflite")
    runner = load_runner(path)
    static = load_runner(export_tflite(kdet["unfolded"], Path(directory) / "profile_tflite_b1.tflite", batch_size=1))
    contenders = {"tf": None, "keras": None, "tflite": lambda: runner(image), "tflite_batch1": lambda: static(image)}
    for key, model in (("tf", kdet["model"]), ("keras", kdet["unfolded"])):
        detect = tf.function(lambda x, m=model: m.detect(tf.cast(x, tf.float32)))
        contenders[key] = lambda d=detect: {k: v.numpy() for k, v in d(tf.constant(image)).items()}
    coverage = {name: delegation(Path(file).read_bytes()) for name, file in (("tflite", path),
                                                                              ("tflite_batch1", static.path))}
    return {"xnnpack": coverage, **round_robin(contenders, rounds=rounds, warmup=warmup, reference="tf")}


def stage_records(label, stages, model, rounds, warmup):
    """stage_record of every {name: stage callable}, each printed as one line "[label] name tf .. tflite .. ratio"."""
    from speed_common import load_average
    records = {}
    for stage_name, call in stages.items():
        records[stage_name] = result = stage_record(stage_name, call, model, rounds, warmup)
        medians = {key: value["median_ms"] for key, value in result["contenders"].items()}
        ratio = result["ratios"]["tflite"]
        print(f"[{label}] {stage_name:14s} tf {medians['tf']:9.2f} ms  tflite {medians['tflite']:9.2f} ms  "
              f"ratio {ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})"
              + (f"  tf_builtins {medians['tf_builtins']:.2f} ms" if "tf_builtins" in medians else "")
              + f"  not in XNNPACK: {result['xnnpack']['not_delegated']}  load {load_average()}", flush=True)
    return records


def profile_pair(name, builder, rounds, warmup, directory):
    """One twin's --tflite record: {"input", "stages": {stage: stage_record}, "end_to_end", load averages}."""
    from speed_common import load_average
    start, load_start = time.perf_counter(), load_average()
    pair, kdet_stages, _ = builder(fold=True)
    model = pair["kdet"]["model"]
    stages = stage_records(f"tflite {name}", kdet_stages, model, rounds, warmup)
    whole = end_to_end(pair["kdet"], directory, rounds, warmup)
    print(f"[tflite] {name} end to end  " + "  ".join(f"{key} {value['median_ms']:.1f} ms" for key, value in
          whole["contenders"].items()) + f"  tflite/tf {whole['ratios']['tflite']['median']:.3f}  tflite_batch1/tf "
          f"{whole['ratios']['tflite_batch1']['median']:.3f}  not in XNNPACK (batch 1): "
          f"{whole['xnnpack']['tflite_batch1']['not_delegated']}", flush=True)
    return {"input": pair["input"], "stages": stages, "end_to_end": whole,
            "seconds": round(time.perf_counter() - start, 1), "load_average_start": load_start,
            "load_average_end": load_average()}
