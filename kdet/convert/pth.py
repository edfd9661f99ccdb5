"""Read a PyTorch `.pth` / `.pt` state dict without PyTorch: torch.save's zip format is a pickle whose tensors
point at raw little-endian storages stored beside it in the archive.

    state = read_pth("fasterrcnn_resnet50_fpn_coco-258fb6c6.pth")     # {name: numpy array}

Only what a state dict holds is unpickled (an OrderedDict / dict of tensors, nested dicts such as a training
checkpoint's {"model": ...}, numbers and strings); anything else (arbitrary classes or functions) is refused, so a
file cannot run code, as torch.load(weights_only=True) does. The pre-1.6 non-zip format is refused with a message.
"""
import collections
import pickle
import zipfile
from pathlib import Path

import numpy as np

from kdet.errors import DataError

# torch storage class -> numpy dtype (torch.save names a tensor's storage by its legacy typed class)
STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                  "BFloat16Storage": None, "LongStorage": np.int64, "IntStorage": np.int32,
                  "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _StorageType:
    def __init__(self, name):
        self.name = name


def _bfloat16_to_float32(raw):
    return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor(storage, offset, size, stride, *_):
    """torch._utils._rebuild_tensor_v2: a view (offset, size, stride in elements) of a flat storage, copied."""
    if len(size) == 0:
        return storage[offset].copy()
    strides = [s * storage.itemsize for s in stride]
    return np.lib.stride_tricks.as_strided(storage[offset:], tuple(size), strides).copy()


def _rebuild_parameter(data, *_):
    return data


_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("builtins", "set"): set, ("builtins", "tuple"): tuple}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix, path):
        super().__init__(file)
        self._archive, self._prefix, self._path = archive, prefix, path

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise DataError(self._path, f"holds {module}.{name}, which a state dict does not need: not loaded "
                                    "(only tensors, dicts and numbers are read)")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise DataError(self._path, f"unknown storage reference {pid!r}")
        raw = self._archive.read(f"{self._prefix}/data/{key}")
        if storage_type.name == "BFloat16Storage":
            return _bfloat16_to_float32(raw)
        return np.frombuffer(raw, STORAGE_DTYPES[storage_type.name])


def read_pth(path):
    """The object torch.save wrote to `path` (a state dict: {name: numpy array}), read without torch.

    Raises DataError naming the file when it is not a zip-format torch file or holds more than tensors and dicts.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise DataError(path, "not a torch.save zip archive (PyTorch >= 1.6 format); re-save it with torch.save, "
                              "or convert it to .npz")
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise DataError(path, "a torch.save archive has one <name>/data.pkl; this one has "
                                  f"{len(pickles)}")
        prefix = pickles[0][:-len("/data.pkl")]
        byteorder = f"{prefix}/byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise DataError(path, "big-endian torch files are not supported")
        with archive.open(pickles[0]) as file:
            try:
                return _Unpickler(file, archive, prefix, path).load()
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
                raise DataError(path, f"corrupt torch file: {error}") from None
