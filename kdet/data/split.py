"""`kdet data split`: seeded train / val / test lists, stratified by class, in the dataset format's own convention.

    counts = split_dataset("voc", "my_dataset", fractions=(0.8, 0.1, 0.1), seed=0)

Stratification (`assign_splits`): each image is put in the stratum of its RAREST class (the class found in the
fewest images of the dataset; images without boxes form a stratum of their own), so a class seen in few images
still reaches every split when it can. Strata are split rarest first: each gets floor(n * fraction) images per
split, and its leftover images go to the splits furthest below their share of the images assigned so far, so the
rounding of small strata does not pile up in one split. Images are shuffled with `seed` inside each stratum: the
same data, fractions and seed always give the same lists.

What is written, so that `data.path` + `data.train_split: train` (etc.) then read the splits:
- voc: `<root>/ImageSets/Main/<split>.txt` in the dataset root (VOC's own place; `data.path` stays the root);
- coco: `<out>/<split>.json` (default out: the annotation json's folder), each a subset of the original json (every
  field kept), `file_name` rewritten relative to `<out>`; `data.path: <out>`;
- yolo: `<out>/<split>.txt` image lists (paths relative to `<out>`) + `<out>/data.yaml` naming them; `data.path: <out>`.
Images the reader skips (unreadable, bad annotation file) are left out of every list and counted in the report.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from kdet.data.images import outside_reason
from kdet.data.io import load_dataset
from kdet.data.records import DetectionDataset
from kdet.errors import ConfigError, DataError

SPLIT_NAMES = ("train", "val", "test")


def assign_splits(label_lists, fractions, seed=0) -> np.ndarray:
    """The split index (0..len(fractions)-1) of each image, stratified by its rarest class (module docstring).

    label_lists: one sequence of class labels per image (empty for an image without boxes).
    fractions: one per split, each >= 0, summing to 1.
    """
    fractions = np.asarray(fractions, np.float64)
    if fractions.ndim != 1 or len(fractions) < 1 or np.any(fractions < 0) or not math.isclose(fractions.sum(), 1.0,
                                                                                            abs_tol=1e-6):
        raise ConfigError(f"split fractions {fractions.tolist()} must be >= 0 and sum to 1")
    images_with = Counter(label for labels in label_lists for label in set(int(v) for v in labels))
    stratum_of = [min(set(int(v) for v in labels), key=lambda c: (images_with[c], c)) if len(labels) else -1
                  for labels in label_lists]
    strata = {}
    for index, stratum in enumerate(stratum_of):
        strata.setdefault(stratum, []).append(index)
    rng = np.random.default_rng(seed)
    assigned = np.zeros(len(label_lists), np.int64)
    totals = np.zeros(len(fractions), np.int64)
    for stratum in sorted(strata, key=lambda s: (images_with.get(s, math.inf), s)):
        members = np.asarray(strata[stratum])[rng.permutation(len(strata[stratum]))]
        counts = np.floor(len(members) * fractions).astype(np.int64)
        for _ in range(len(members) - counts.sum()):
            done = totals.sum() + counts.sum() + 1
            deficit = fractions * done - (totals + counts)
            deficit[fractions == 0] = -np.inf
            counts[int(np.argmax(deficit))] += 1
        assigned[members] = np.repeat(np.arange(len(fractions)), counts)
        totals += counts
    return assigned


def _every_image(format, path, options) -> DetectionDataset:
    """The whole dataset (every split a YOLO yaml lists, joined)."""
    if format in ("voc", "coco"):
        return load_dataset(format, path, split=None, verbose=False, **options)
    if format == "yolo":
        from kdet.data.io import _yolo_yaml
        listed = yaml.safe_load(_yolo_yaml(Path(path)).read_text(encoding="utf-8")) or {}
        parts = [load_dataset("yolo", path, split=s, verbose=False, **options) for s in SPLIT_NAMES if listed.get(s)]
        if not parts:
            raise DataError(path, "the YOLO yaml lists no train / val / test images to split")
        seen, records = set(), []
        for part in parts:
            for record in part.records:
                if record.path not in seen:
                    seen.add(record.path)
                    records.append(record)
        return DetectionDataset(records=records, class_names=parts[0].class_names, report=parts[0].report)
    raise ConfigError(f"kdet data split works on voc, coco and yolo datasets, not {format!r} (convert it first)")


def split_dataset(format, path, out=None, fractions=(0.8, 0.1, 0.1), seed=0, names=SPLIT_NAMES, **options) -> dict:
    """Write the split lists (module docstring) and return {"written": [paths], "splits": {name: {"images": n,
    "boxes_per_class": {class: count}}}, "report": the reader's summary line}."""
    if len(names) != len(fractions):
        raise ConfigError(f"{len(fractions)} fractions for {len(names)} splits {list(names)}")
    dataset = _every_image(format, path, options)
    if not len(dataset):
        raise DataError(path, f"no usable image to split ({dataset.report.summary()})")
    assigned = assign_splits([r.labels.tolist() for r in dataset.records], fractions, seed)
    chosen = {name: [r for r, a in zip(dataset.records, assigned) if a == i] for i, name in enumerate(names)}
    written = {"voc": _write_voc, "coco": _write_coco, "yolo": _write_yolo}[format](dataset, chosen, Path(path),
                                                                                   out, options)
    splits = {name: {"images": len(records),
                     "boxes_per_class": {c: int(sum((r.labels == label).sum() for r in records))
                                         for label, c in enumerate(dataset.class_names)}}
              for name, records in chosen.items()}
    return {"written": [str(p) for p in written], "splits": splits, "report": dataset.report.summary()}


def _write_voc(dataset, chosen, root, out, options):
    if out is not None and Path(out).resolve() != root.resolve():
        raise ConfigError(f"VOC split lists live in the dataset root ({root}/ImageSets/Main), which data.path names: "
                          f"drop --out {out}")
    annotations = root / options.get("annotations_dir", "Annotations")
    stems = sorted(p.stem for p in annotations.glob("*.xml"))  # read_voc(split=None) numbers images in this order
    lists = root / "ImageSets" / "Main"
    lists.mkdir(parents=True, exist_ok=True)
    written = []
    for name, records in chosen.items():
        target = lists / f"{name}.txt"
        target.write_text("".join(f"{stems[r.image_id]}\n" for r in records), encoding="utf-8")
        written.append(target)
    return written


def _coco_json(path: Path) -> Path:
    if path.is_file():
        return path
    from kdet.data.io import _first_existing
    return _first_existing(path, ["annotations.json"], "COCO annotation json")


def _write_coco(dataset, chosen, path, out, options):
    json_path = _coco_json(path)
    out = Path(out) if out is not None else json_path.parent
    document = json.loads(json_path.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, records in chosen.items():
        file_names = {}
        for record in records:
            relative = os.path.relpath(record.path, out)
            if outside_reason(relative) is not None:
                raise ConfigError(f"COCO split: image {record.path} is not under --out {out}; choose an --out folder "
                                  f"that contains the images (default: the json's folder)")
            file_names[record.image_id] = Path(relative).as_posix()
        subset = dict(document)
        subset["images"] = [dict(entry, file_name=file_names[entry["id"]]) for entry in document["images"]
                            if isinstance(entry, dict) and entry.get("id") in file_names]
        subset["annotations"] = [a for a in document.get("annotations") or []
                                 if isinstance(a, dict) and a.get("image_id") in file_names]
        target = out / f"{name}.json"
        if target.resolve() == json_path.resolve():
            raise ConfigError(f"COCO split: {target} would overwrite the annotation file being split; choose --out")
        target.write_text(json.dumps(subset), encoding="utf-8")
        written.append(target)
    return written


def _write_yolo(dataset, chosen, path, out, options):
    if out is None:
        raise ConfigError("kdet data split of a YOLO dataset needs --out (the folder for the lists and data.yaml)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    document = {"path": "."}
    for name, records in chosen.items():
        target = out / f"{name}.txt"
        target.write_text("".join(f"{Path(os.path.relpath(r.path, out)).as_posix()}\n" for r in records),
                          encoding="utf-8")
        document[name] = target.name
        written.append(target)
    document["names"] = {index: name for index, name in enumerate(dataset.class_names)}
    yaml_file = out / "data.yaml"
    yaml_file.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return written + [yaml_file]


def format_split(result: dict) -> str:
    """The table `kdet data split` prints: images and boxes per class in each split."""
    splits = result["splits"]
    classes = list(next(iter(splits.values()))["boxes_per_class"])
    width = max([len(c) for c in classes] + [len("images")])
    lines = [f"{'':<{width}} " + " ".join(f"{name:>7}" for name in splits),
             f"{'images':<{width}} " + " ".join(f"{s['images']:>7}" for s in splits.values())]
    lines += [f"{c:<{width}} " + " ".join(f"{s['boxes_per_class'][c]:>7}" for s in splits.values()) for c in classes]
    lines.append(f"read report: {result['report']}")
    lines += [f"wrote {path}" for path in result["written"]]
    return "\n".join(lines)
