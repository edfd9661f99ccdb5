"""`kdet` CLI: train | evaluate | predict | export | benchmark | run | serve | convert torchvision | data {...}.

The data commands: check, convert, show, split, anchors.

Every command that takes a model takes `--config FILE` and any number of `--set section.key=value` overrides.
Errors in the user's input (bad config key, missing file, corrupt data) print one line and exit with status 2.
"""
import argparse
import sys
from pathlib import Path

from kdet.errors import KdetError, require
from kdet.jsonio import dumps, write_json


_CHECKPOINT_HELP = "a .keras model or .weights.h5 file (default: the run's model.keras, else its last weights)"


def _add_config(parser, required=True):
    parser.add_argument("--config", required=required, metavar="FILE", help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, parsed as YAML and validated like the file: "
                             "--set train.epochs=3 (repeatable)")


def _command(subparsers, name, text, **kwargs):
    """A subcommand whose one-line `text` is both its entry in the parent's --help and its own description."""
    return subparsers.add_parser(name, help=text, description=text, **kwargs)


def _add_inference_options(parser, bfloat16="the network computes in bfloat16"):
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                        help=f"float32 (default) or bfloat16: {bfloat16}; boxes, anchors and NMS stay float32")
    parser.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                        help="keep BatchNorm layers (default: folded into the preceding convolutions)")


def _torchvision_archs():
    from kdet.convert.pretrained import ARCHITECTURES
    return sorted(ARCHITECTURES)


def _parser():
    from kdet import __version__  # the package is already imported: `kdet.cli` lives in it
    parser = argparse.ArgumentParser(prog="kdet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kdet {__version__}",
                        help="print kdet's version and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's log lines and Python warnings (hidden by default)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="kdet COMMAND --help shows the options of a command")

    p = _command(sub, "train", "train with model.fit, checkpoint every epoch")
    _add_config(p)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in train.output_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in train.output_dir (without it, kdet train refuses to)")
    p.add_argument("--schedule", choices=["joint", "alternating", "fast_rcnn"], default=None,
                   help="overrides train.schedule: joint (one fit, every model), and for two-stage detectors the "
                        "paper's 4-step alternating training, or fast_rcnn (the second stage alone, on --proposals)")
    p.add_argument("--proposals", metavar="JSON",
                   help="Fast R-CNN mode: train the second stage on the boxes of this JSON file")

    p = _command(sub, "evaluate", "COCO AP (pycocotools) and VOC mAP@0.5 on a split")
    _add_config(p)
    p.add_argument("--split", default="test", help="which split of the dataset (default: test)")
    p.add_argument("--checkpoint", metavar="FILE", help=_CHECKPOINT_HELP)
    p.add_argument("--metric", choices=["coco", "voc", "both"], default="both",
                   help="COCO AP, VOC mAP@0.5 or both (default: both)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to this file")
    p.add_argument("--proposals", metavar="JSON",
                   help="Fast R-CNN mode: evaluate the second stage on the boxes of this JSON file")
    _add_inference_options(p)

    p = _command(sub, "predict", "detect objects (or segment) in images, folders or globs; write an annotated "
                          "picture + JSON per image (segmentation: colour overlay PNG, class-id mask PNG, JSON)")
    _add_config(p, required=False)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders (their images) and glob patterns ('photos/**/*.jpg', quoted)")
    p.add_argument("--out", default="predictions", help="output directory (default: predictions)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help=_CHECKPOINT_HELP + "; a .keras file alone needs no --config")
    p.add_argument("--score-threshold", type=float, default=0.3,
                   help="keep detections scoring at least this (default: 0.3)")
    p.add_argument("--save-format", choices=["auto", "png", "jpg"], default="auto",
                   help="picture format: auto = JPEG for JPEG input, PNG otherwise (default: auto)")
    p.add_argument("--no-save-images", dest="save_images", action="store_false",
                   help="write no pictures (JSON only)")
    p.add_argument("--save-json", dest="save_json", action=argparse.BooleanOptionalAction, default=True,
                   help="write <name>.json per image (default: yes; --no-save-json to skip)")
    p.add_argument("--tiled", action="store_true",
                   help="segmentation: overlap-tile prediction at the image's own resolution instead of resizing")
    p.add_argument("--heatmap", action="store_true",
                   help="also write <name>_heatmap.png: the class-max heatmap over the image (CenterNet)")
    _add_inference_options(p)

    p = _command(sub, "export", "SavedModel (TF Serving layout) / TFLite / ONNX")
    _add_config(p, required=False)
    p.add_argument("--format", dest="formats", action="append", choices=["saved_model", "tflite", "onnx"],
                   help="repeatable; default: export.formats of the config")
    p.add_argument("--quantize", choices=["fp16", "int8"],
                   help="TFLite weights in float16, or full int8 calibrated on training images "
                        "(default: export.quantize of the config)")
    p.add_argument("--checkpoint", metavar="FILE", help=_CHECKPOINT_HELP + "; a .keras file alone needs no --config")
    p.add_argument("--out", help="output directory (default: export.out_dir, or saved_models without a config)")
    p.add_argument("--name", help="export name (default: export.name, or the .keras file's stem)")
    _add_inference_options(p, "the SavedModel computes in bfloat16 (SavedModel only)")

    p = _command(sub, "benchmark", "latency / FPS of exported artifacts on the same images")
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".keras, SavedModel dir, .tflite or .onnx")
    p.add_argument("--runs", type=int, default=50, help="timed runs per artifact (default: 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs first (default: 5)")
    p.add_argument("--batch", type=int, default=1, help="images per run (default: 1)")
    _add_inference_options(p, ".keras artifacts compute in bfloat16")

    p = _command(sub, "run", "the main job: train, evaluate, export, predict and draw, in one go")
    _add_config(p)
    p.add_argument("--out", default="out", help="where predictions and the picture go (default: out)")

    _command(sub, "serve", "serve a SavedModel base dir with TensorFlow Serving's REST + gRPC contract "
                  "(kdet serve --help)", add_help=False)

    convert = _command(sub, "convert", "convert pretrained weights into a ready kdet model").add_subparsers(
        dest="convert_command", required=True, metavar="SOURCE", help="kdet convert SOURCE --help shows its options")
    p = _command(convert, "torchvision", "a torchvision detector's state dict (.pth, read without torch) -> .keras "
                                         "with its class names, for kdet predict / export")
    p.add_argument("--arch", required=True, help="torchvision builder name: " + ", ".join(_torchvision_archs()))
    p.add_argument("--weights", required=True, metavar="FILE", help="state dict file (.pth / .pt / .npz)")
    p.add_argument("--output", required=True, metavar="FILE", help="the .keras file to write")

    data = _command(sub, "data", "inspect and convert datasets").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND",
        help="kdet data DATA_COMMAND --help shows its options")
    _command(data, "anchors", "k-means anchor priors (1 - IoU distance) for YOLOv2 (kdet data anchors --help)",
             add_help=False)
    for name, text in (("check", "per-class counts, image sizes and every bad record (format detected from PATH)"),
                       ("convert", "write a dataset in another format"),
                       ("show", "draw the ground truth of the first images to PNG"),
                       ("split", "write seeded train / val / test lists, stratified by class")):
        p = _command(data, name, text)
        _add_config(p, required=False)
        p.add_argument("dataset", nargs="?", metavar="PATH",
                       help="the dataset (VOC folder, COCO json or folder, YOLO yaml or folder, TFRecord): its "
                            "format is detected (instead of --config / --format)")
        p.add_argument("--format", help="dataset format (instead of --config): shapes, coco, voc, yolo, tfrecord, "
                                        "label_image")
        p.add_argument("--path", help="dataset path (instead of --config)")
        if name != "split":
            p.add_argument("--split", default=None,
                           help="which split of the dataset (default: train; every image for a detected PATH)")
        if name == "convert":
            p.add_argument("--to", required=True, choices=["coco", "voc", "yolo", "tfrecord"],
                           help="format to write")
            p.add_argument("--out", required=True, help="output directory")
        if name == "show":
            p.add_argument("--out", default="data_show", help="output directory (default: data_show)")
            p.add_argument("--num", type=int, default=4, help="how many images to draw (default: 4)")
        if name == "split":
            p.add_argument("--out", help="where the lists go: coco: <out>/<split>.json (default: the json's "
                                         "folder), yolo: <out>/<split>.txt + data.yaml; voc: always the dataset "
                                         "root's ImageSets/Main")
            p.add_argument("--fractions", type=float, nargs="+", default=[0.8, 0.1, 0.1], metavar="F",
                           help="one fraction per split, summing to 1 (default: 0.8 0.1 0.1)")
            p.add_argument("--names", nargs="+", default=["train", "val", "test"], metavar="NAME",
                           help="the split names (default: train val test)")
            p.add_argument("--seed", type=int, default=0, help="shuffling seed (default: 0)")
    return parser


def _source(args):
    """(format, path, reader options, how it was chosen) of a data command's dataset."""
    given = [what for what, value in (("PATH", args.dataset), ("--config", args.config), ("--format", args.format))
             if value]
    if len(given) > 1:
        raise KdetError(f"give one of PATH, --config or --format (got {' and '.join(given)})")
    if args.dataset:
        from kdet.data.detect import detect_format
        found = detect_format(args.dataset)
        return found.format, found.path, found.options, f"detected {found.format}: {found.reason}"
    if args.config:
        from kdet.config import load_config
        d = load_config(args.config, args.overrides).data
        return d.format, d.path, dict(d.options), None
    if not args.format:
        raise KdetError("give the dataset PATH, or --config, or --format (and --path)")
    return args.format, args.path, {}, None


def _dataset(args):
    if args.config and not args.dataset and not args.format:
        from kdet.build import load_split
        from kdet.config import load_config
        return load_split(load_config(args.config, args.overrides), args.split or "train")
    from kdet.data.io import load_dataset
    format, path, options, detected = _source(args)
    split = args.split
    if split is None:
        split = None if detected and format in ("voc", "coco", "tfrecord") else "train"
    if detected:
        print(f"{detected}; split: {split or 'every image'}")
    return load_dataset(format, path, split=split, **options)


def _print_figures(results):
    for key, value in results.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for name, v in value.items():
                print(f"  {name:<20} {v:.4f}")
        elif isinstance(value, float):
            print(f"{key:<22} {value:.4f}")
        else:
            print(f"{key:<22} {value}")


def _run(args):
    import kdet.api as api
    if args.command == "train":
        overrides = list(args.overrides)
        if args.schedule:
            overrides.append(f"train.schedule={args.schedule}")
        if args.proposals:
            overrides += ["train.schedule=fast_rcnn", f"train.proposals={args.proposals}"]
        if args.resume and args.overwrite:
            raise KdetError("--resume continues the run in train.output_dir, --overwrite replaces it: give one")
        from kdet.config import load_config
        from kdet.training.run import check_fresh_start
        config = load_config(args.config, overrides)
        if not args.resume and not args.overwrite:
            check_fresh_start(config)
        result = api.train(config, resume=args.resume)
        print(f"trained {result['epochs']} epochs; model {result['model_file']}")
    elif args.command == "evaluate":
        if args.proposals:
            from kdet.config import load_config
            from kdet.training.schedules import evaluate_fast_rcnn
            results = evaluate_fast_rcnn(load_config(args.config, args.overrides), args.proposals, split=args.split,
                                         checkpoint=args.checkpoint, metric=args.metric)
        else:
            results = api.evaluate(args.config, args.overrides, split=args.split, checkpoint=args.checkpoint,
                                   metric=args.metric, precision=args.precision, fold_bn=args.fold_bn)
        _print_figures(results)
        if args.json:
            write_json(results, args.json)
    elif args.command == "predict":
        from kdet.inference.predict import summary_line
        if args.config is None and args.overrides:
            raise KdetError("--set needs --config")
        results = api.predict(args.config, args.images, args.out, args.overrides, args.checkpoint,
                              args.score_threshold, tiled=args.tiled, save_images=args.save_images,
                              save_json=args.save_json, save_format=args.save_format, precision=args.precision,
                              fold_bn=args.fold_bn, heatmap=args.heatmap)
        for r in results:
            print(f"{r['image']}: pixels per class {r['pixels']}" if "pixels" in r else summary_line(r))
        written = [what for what, wanted in (("pictures", args.save_images), ("JSON", args.save_json)) if wanted]
        print(f"{len(results)} images; {' + '.join(written) or 'nothing'} written to {args.out}/")
    elif args.command == "export":
        if args.config is None and args.overrides:
            raise KdetError("--set needs --config")
        for fmt, path in api.export(args.config, args.overrides, args.formats, args.quantize, args.checkpoint,
                                    args.out, args.name, precision=args.precision, fold_bn=args.fold_bn).items():
            print(f"{fmt}: {path}")
    elif args.command == "benchmark":
        from kdet.inference.benchmark import benchmark_artifacts
        for row in benchmark_artifacts(args.artifacts, runs=args.runs, warmup=args.warmup, batch=args.batch,
                                       precision=args.precision, fold_bn=args.fold_bn):
            print(dumps(row))
    elif args.command == "run":
        from kdet.main_job import run_main_job
        run_main_job(args.config, args.overrides, args.out)
    elif args.command == "convert":
        from kdet.convert.pretrained import convert_torchvision
        path, copied = convert_torchvision(args.arch, args.weights, args.output)
        print(f"{args.arch}: {copied} tensors from {args.weights} -> {path}")
    elif args.command == "data":
        _run_data(args)
    return 0


def _run_data(args):
    if args.data_command == "split":
        from kdet.data.split import format_split, split_dataset
        format, path, options, detected = _source(args)
        if detected:
            print(detected)
        print(format_split(split_dataset(format, path, args.out, tuple(args.fractions), args.seed,
                                         tuple(args.names), **options)))
        return
    dataset = _dataset(args)
    if args.data_command == "check":
        from kdet.data.check import check_dataset, format_check
        print(format_check(check_dataset(dataset)))
    elif args.data_command == "convert":
        from kdet.data.io import write_dataset
        split = args.split or "all"  # a detected PATH reads every image: written as split "all"
        written = write_dataset(dataset, args.to, args.out, split=split)
        print(f"wrote {len(dataset)} images as {args.to} split {split!r} to {written}")
    elif args.data_command == "show":
        from kdet.data.images import read_image
        from kdet.inference.visualize import draw_detections, save_png
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for record in dataset.records[:args.num]:
            image = record.image if record.image is not None else read_image(record.path)
            picture = draw_detections(image, record.boxes, record.labels, None,
                                      dataset.class_names)
            save_png(picture, out / f"{record.image_id}.png")
        print(f"wrote {min(args.num, len(dataset))} pictures to {out}/")


# Commands whose options belong to another module's parser: handed their arguments untouched. Each names the
# optional packages it needs and the pip extra that brings them.
_DELEGATED = {("serve",): ("kdet.serving.server", "main", ("grpc", "tensorflow_serving.apis"), "serve"),
              ("data", "anchors"): ("kdet.data.anchors_kmeans", "anchors_main", (), None)}


def _quiet_python_logs():
    """Without --verbose: absl / TensorFlow Python log lines below errors and library warnings are not shown."""
    import logging
    import warnings
    warnings.filterwarnings("ignore", module=r"(keras|tensorflow|tf2onnx|absl|google)\b")
    warnings.filterwarnings("ignore", category=UserWarning, message=r".*(oneDNN|CUDA|cuda)")
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = "--verbose" in argv  # a global flag, accepted anywhere (the delegated commands' parsers lack it)
    argv = [a for a in argv if a != "--verbose"]
    if not verbose:
        _quiet_python_logs()
    delegated = next(((prefix, target) for prefix, target in _DELEGATED.items()
                      if tuple(argv[:len(prefix)]) == prefix), None)
    try:
        if delegated is not None:
            import importlib
            prefix, (module, function, needs, extra) = delegated
            for name in needs:
                require(name, extra, f"kdet {' '.join(prefix)}")
            return getattr(importlib.import_module(module), function)(argv[len(prefix):])
        return _run(_parser().parse_args((["--verbose"] if verbose else []) + argv))
    except KdetError as error:
        print(f"kdet: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdet: interrupted (the last completed epoch's checkpoint is kept; use --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
