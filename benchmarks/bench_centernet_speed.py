"""CenterNet latency by format at 512x512, beside RetinaNet R18: Keras (.keras), SavedModel, TFLite fp32 and int8,
each model's artifacts timed round-robin in one process (`kdet benchmark`'s timer), batch 1, 2 threads.

    PYTHONPATH=. python3 benchmarks/bench_centernet_speed.py [--runs 7] [--only centernet_r18,retinanet_r18]

Random weights (speed does not depend on training); int8 calibrated on 8 random images. Hourglass-104 (190 M
parameters) is slow to convert; --only skips models. Prints one JSON line per artifact.
"""
import argparse
import json
import tempfile
from pathlib import Path

import keras
import numpy as np

from kdet.export import export_model
from kdet.inference.benchmark import benchmark_artifacts
from kdet.models import CenterNet, RetinaNet

SIZE = (512, 512)
MODELS = {
    "centernet_r18_dcn": lambda: CenterNet(80, SIZE, backbone="resnet", depth=18, deformable=True),
    "centernet_dla34": lambda: CenterNet(80, SIZE, backbone="dla34", head_conv=256),
    "centernet_hourglass104": lambda: CenterNet(80, SIZE, backbone="hourglass104", head_conv=256),
    "retinanet_r18_fpn": lambda: RetinaNet(80, SIZE, depth=18),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", help="comma-separated model names (default: all)")
    parser.add_argument("--formats", default="keras,saved_model,tflite,int8")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(MODELS)
    formats = args.formats.split(",")
    representative = np.random.default_rng(0).integers(0, 256, (8, *SIZE, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            keras.utils.set_random_seed(0)
            model = MODELS[name]()
            model(representative[:1])
            paths = []
            if "keras" in formats:
                paths.append(str(Path(tmp) / f"{name}.keras"))
                model.save(paths[-1])
            exported = export_model(model, tmp, name, formats=[f for f in ("saved_model", "tflite") if f in formats])
            paths += list(exported.values())
            if "int8" in formats:
                int8 = export_model(model, tmp, f"{name}_int8", formats=["tflite"], quantize="int8",
                                    representative_images=representative)
                paths.append(int8["tflite"])
            params = int(sum(np.prod(w.shape) for w in model.weights))
            for row in benchmark_artifacts(paths, runs=args.runs, warmup=args.warmup):
                fmt = "tflite_int8" if "_int8" in row["name"] else row["format"]
                print(json.dumps({"model": name, "format": fmt, "parameters": params,
                                  **{k: row[k] for k in ("median_ms", "p90_ms", "fps")}}), flush=True)


if __name__ == "__main__":
    main()
