import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
# The real annotated data lives beside the clone (never copied into the repo): ../shared/data
SHARED_DATA = Path(os.environ.get("KDET_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA} (set KDET_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def voc_copy(tmp_path, shared_data, request):
    """A VOC tree in tmp_path of the BCCD images the test module lists in BCCD_IDS (xml, jpg and a 'train' list), to
    be edited by each test."""
    image_ids = request.module.BCCD_IDS
    source = shared_data / "bccd" / "BCCD"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True)
    for image_id in image_ids:
        shutil.copy(source / "Annotations" / f"{image_id}.xml", tmp_path / "Annotations")
        shutil.copy(source / "JPEGImages" / f"{image_id}.jpg", tmp_path / "JPEGImages")
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("\n".join(image_ids) + "\n")
    return tmp_path
