"""Weight files in every format the package reads: .caffemodel (V1/V2), .safetensors and torch.save
state_dicts (.pt/.pth), told apart by their first bytes, never by the suffix.

A caffemodel names its blobs by layer; a state_dict by key, `LAYER.weight` / `LAYER.bias` as
CaffeNet's modules do. `read_blobs` gives a net {layer: [arrays]} for CaffeNet.load_caffemodel,
the one place nets take weights; for a state_dict it first checks every key and shape against
the net and names the first that differs, so a wrong file loads nothing. Safetensors are read
(zero-copy from a memory map) and written here: the format is a JSON header and raw little-endian
data, no dependency needed. torch.load runs with weights_only=True: a .pt file cannot run code.
"""
import json
import mmap
import os
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write
from .caffe import caffemodel
from .errors import CaffeError

CAFFEMODEL, SAFETENSORS, TORCH = "caffemodel", "safetensors", "torch"
FORMATS = (CAFFEMODEL, SAFETENSORS, TORCH)
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U8": "u1", "BOOL": "?"}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
_MAX_HEADER = 100 * 2**20  # the safetensors library's own bound


class WeightsError(CaffeError, ValueError):
    """A weights file that cannot be read, or does not fit the net: names the file and the key."""

    def __init__(self, message, file=None, key=None):
        self.file, self.key, self.reason = file, key, message
        where = str(file) if file is not None else "<weights>"
        super().__init__(f"{where}: key '{key}': {message}" if key is not None else f"{where}: {message}")


def shape_equals(file_shape, param_shape):
    """Caffe's Blob::ShapeEquals for a trained blob, the one shape rule for weights in every format:
    the same shape, or a legacy 4-D blob whose (num, channels, height, width) is the parameter's
    shape with leading axes of 1. Nothing else is reshaped (an fc weight does not load into a conv:
    that is net surgery, surgery.transplant)."""
    file_shape, param_shape = tuple(file_shape), tuple(param_shape)
    if file_shape == param_shape:
        return True
    return len(file_shape) == 4 and len(param_shape) <= 4 and \
        file_shape == (1,) * (4 - len(param_shape)) + param_shape


def detect(path):
    """CAFFEMODEL, SAFETENSORS or TORCH from the file's first bytes: a zip container or a pickle
    (torch.save), an 8-byte header length followed by '{' (safetensors), else protobuf."""
    with open(path, "rb") as f:
        head = f.read(9)
        size = os.fstat(f.fileno()).st_size
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # no NetParameter field has tag 0x80 (field 16)
        return TORCH
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8:
        return SAFETENSORS
    return CAFFEMODEL


def read_safetensors(path):
    """{key: array} of a .safetensors file, views of a private memory map (as caffemodel.read)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise WeightsError("too short for a safetensors file", path)
        n = int.from_bytes(f.read(8), "little")
        if n > min(_MAX_HEADER, size - 8):
            raise WeightsError(f"header length {n} exceeds the file ({size} bytes)", path)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsError(f"the safetensors header is not JSON: {e}", path) from None
        data = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY))[8 + n:] if size > 8 + n else b""
    if not isinstance(header, dict):
        raise WeightsError("the safetensors header is not a JSON object", path)
    out = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = np.dtype(_ST_DTYPES[entry["dtype"]])
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise WeightsError(f"bad header entry {entry!r} (dtypes read: {', '.join(_ST_DTYPES)})", path,
                               key) from None
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= len(data) or end - begin != count * dtype.itemsize:
            raise WeightsError(f"data offsets [{begin}, {end}) do not fit shape {shape} of {entry['dtype']} "
                               f"in {len(data)} data bytes", path, key)
        out[key] = np.frombuffer(data, dtype, count, begin).reshape(shape)
    return out


def write_safetensors(path, tensors, metadata=None, sources=()):
    """Write {key: tensor or array} as .safetensors (atomically), keys in the given order; `path` may
    not be one of `sources` (atomic.check_not_source)."""
    arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy() if torch.is_tensor(v) else v) for k, v in tensors.items()}
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for key, a in arrays.items():
        dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if dtype not in _ST_NAMES:
            raise WeightsError(f"dtype {a.dtype} has no safetensors name here", path, key)
        header[key] = {"dtype": _ST_NAMES[dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the safetensors library writes it
    with atomic_write(path, sources) as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for a in arrays.values():
            f.write(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())


def read_torch(path):
    """{key: array} of a torch.save state_dict, loaded with weights_only=True (no code runs)."""
    try:
        with open(path, "rb") as f:  # a file, not a path: torch.load picks safetensors by a path's suffix
            state = torch.load(f, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001  torch raises many kinds (pickle, zip, unsupported globals)
        raise WeightsError(f"not a loadable torch state_dict ({type(e).__name__}: {str(e).splitlines()[0]})",
                           path) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise WeightsError("a torch file that is not a state_dict ({name: tensor})", path)
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()}


def read_state(path):
    """{key: array} of a state_dict file in either format (a caffemodel is refused)."""
    fmt = detect(path)
    if fmt == SAFETENSORS:
        return read_safetensors(path)
    if fmt == TORCH:
        return read_torch(path)
    raise WeightsError("a .caffemodel, not a state_dict", path)


def write_state(path, state, metadata=None, sources=()):
    """A state_dict as .pt/.pth (torch.save) when the name says so, else .safetensors; `path` may
    not be one of `sources`, the files the state was made from (atomic.check_not_source)."""
    if Path(path).suffix.lower() in (".pt", ".pth"):
        with atomic_write(path, sources) as f:
            torch.save({k: v.detach().cpu() for k, v in state.items()}, f)
    else:
        write_safetensors(path, state, metadata, sources)


def layers_of(state):
    """{layer: [arrays]} of a state_dict without a net: keys LAYER.weight / LAYER.bias grouped by
    layer, weight first (a transplant source)."""
    layers = {}
    for key, a in state.items():
        layer, _, blob = key.rpartition(".")
        layers.setdefault(layer, []).append((blob != "weight", a))
    return {layer: [a for _, a in sorted(blobs, key=lambda b: b[0])] for layer, blobs in layers.items()}


def read_layers(path):
    """{layer: [arrays]} of a weights file in any format, without a net."""
    return caffemodel.read(path) if detect(path) == CAFFEMODEL else layers_of(read_state(path))


def read_blobs(path, keys, strict=True):
    """{layer: [arrays]} of a weights file for a net whose parameters are `keys` ({state_dict key:
    (layer, shape)}, in net order). A state_dict must match key for key, and shape for shape by
    `shape_equals` as a caffemodel does in CaffeNet.load_caffemodel (strict=False: keys may be
    missing or extra); the first difference raises WeightsError."""
    if detect(path) == CAFFEMODEL:
        return caffemodel.read(path)
    state = read_state(path)
    blobs = {}
    for key, (layer, shape) in keys.items():
        if key not in state:
            if strict:
                raise WeightsError(f"the net's parameter of shape {tuple(shape)} (layer '{layer}') is not in the "
                                   "file", path, key)
            continue
        if not shape_equals(state[key].shape, shape):
            raise WeightsError(f"the file has shape {tuple(state[key].shape)}, the net expects {tuple(shape)} "
                               "(Caffe copies a blob only into its own shape)", path, key)
        blobs.setdefault(layer, []).append(state[key])
    extra = [k for k in state if k not in keys]
    if extra and strict:
        raise WeightsError(f"shape {tuple(state[extra[0]].shape)} in the file is not a parameter of the net"
                           + (f" (nor are {len(extra) - 1} more keys)" if len(extra) > 1 else ""), path, extra[0])
    return blobs
