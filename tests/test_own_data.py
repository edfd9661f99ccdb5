"""README "Using your own data", run as written: a 12-image labelImg-style VOC folder (images/ + annotations/, no
split lists) made in tmp_path from the synthetic shapes goes through every command of that section's code block:
data check, data split, train, evaluate, predict on the folder and export. Commands with --config get tiny model
settings appended (more --set items); the config path is the repo's."""
import json
import re
from pathlib import Path

import numpy as np

from kdet.cli import main
from kdet.inference.runners import CLASS_NAMES_KEY, tflite_metadata
from tests.test_data_split import labelimg_folder

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.image_size=[64, 64]", "model.args.base_width=8", "model.args.fpn_channels=16", "model.args.head_convs=1",
        "train.epochs=1", "train.batch_size=4", "train.steps_per_epoch=2", "train.eval_every=0",
        "train.log_every_steps=1"]


def readme_commands():
    """The kdet command lines of the README section's code block."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Using your own data", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    return [re.split(r"\s+#", line)[0].split() for line in block.splitlines() if line.startswith("kdet ")]


def test_readme_own_data_section_runs(tmp_path, monkeypatch, capsys):
    labelimg_folder(tmp_path / "my_dataset", num_images=12)
    monkeypatch.chdir(tmp_path)
    commands = readme_commands()
    assert [c[1] for c in commands] == ["data", "data", "train", "evaluate", "predict", "export"]
    outputs = {}
    for argv in commands:
        argv = [str(REPO / a) if a.startswith("configs/") else a for a in argv[1:]]
        if "--config" in argv:
            argv += [item for setting in TINY for item in ("--set", setting)]
        assert main(argv) == 0, f"kdet {' '.join(argv)} failed:\n{capsys.readouterr().err[-2000:]}"
        outputs[argv[1] if argv[0] == "data" else argv[0]] = capsys.readouterr().out

    assert "detected voc: a folder of VOC xml files in annotations/ with images in images/" in outputs["check"]
    assert "images: 12 (0 without boxes)" in outputs["check"]
    lists = {s: (tmp_path / "my_dataset/ImageSets/Main" / f"{s}.txt").read_text().split() for s in
             ("train", "val", "test")}
    assert sorted(sum(lists.values(), [])) == sorted(p.stem for p in (tmp_path / "my_dataset/annotations").iterdir())
    assert [len(v) for v in lists.values()] == [10, 1, 1]
    images_row = next(line for line in outputs["split"].splitlines() if line.startswith("images"))
    assert images_row.split()[1:] == ["10", "1", "1"]

    run = tmp_path / "runs" / "my_dataset"
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["steps"] == 2 and np.isfinite(history[0]["loss"])
    reads = json.loads((run / "read_report.json").read_text())
    assert reads["training"]["num_images"] == 10 and reads["validation"]["num_images"] == 1
    assert list((run / "logs").glob("events.out.tfevents.*"))

    assert "num_images             1" in outputs["evaluate"]  # the test split: 1 image
    assert re.search(r"^AP\s+\d\.\d{4}$", outputs["evaluate"], re.M) and "mAP50" in outputs["evaluate"]

    predictions = tmp_path / "predictions"
    assert sorted(p.stem for p in predictions.glob("*.json")) == sorted(p.stem for p in (
        tmp_path / "my_dataset/images").iterdir())
    assert len(list(predictions.glob("*.png"))) == 12
    assert "12 images; pictures + JSON written to predictions/" in outputs["predict"]

    saved = tmp_path / "saved_models" / "my_dataset"
    assert (saved / "1" / "saved_model.pb").is_file()
    assert (saved / "1" / "assets.extra" / "labels.txt").read_text().split() == ["circle", "square", "triangle"]
    stored = tflite_metadata(saved / "my_dataset.tflite")[CLASS_NAMES_KEY].decode()
    assert all(name in stored for name in ("circle", "square", "triangle"))
