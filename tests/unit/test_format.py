"""``export.format``: save/load round trips, and every kind of bad file rejected with FormatError.

References: the loaded model is compared with the model that was saved (outputs and every
tensor with ``torch.equal``, integers of each layer via ``integer_outputs``); the file
layout is read back here by hand (8-byte length, JSON, raw bytes) and each tensor's
SHA-256 computed with ``hashlib`` on the raw bytes, independently of the code under test.
Bad files are written by hand: truncations, random bytes, a pickle, a zip, flipped bytes,
and metadata rewritten with a valid checksum so that the semantic checks are reached.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import random
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

import glassquant
from glassquant.demo.digits import load_digits_split, make_mlp
from glassquant.export.format import FormatError, load, save
from glassquant.nn.base import LAYER_KINDS, QuantModule
from glassquant.nn.linear import DynamicQuantLinear, QuantLinear

# Bytes of pickle.dumps({"a": 1}, protocol=4), written out: the test never imports pickle.
PICKLE_BYTES = b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def float_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return make_mlp(hidden=48).eval()


def quantized_mlp(config: str, digits) -> tuple[nn.Sequential, nn.Sequential]:
    """(float copy, quantized model) of the digits MLP; static configs calibrate on 256 digits."""
    model = float_mlp()
    fresh = copy.deepcopy(model)
    glassquant.quantize(model, config, [digits.x_train[:256]])
    return fresh, model


def assert_same_model(a: nn.Module, b: nn.Module, x: Tensor) -> None:
    """Same outputs, same per-layer integers, same tensors (names, dtypes, values), same layer metadata."""
    assert torch.equal(a(x), b(x))
    ia, ib = glassquant.integer_outputs(a, x), glassquant.integer_outputs(b, x)
    assert ia.keys() == ib.keys()
    assert all(torch.equal(ia[k], ib[k]) for k in ia)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    qa = {n: m.record()[1] for n, m in a.named_modules() if isinstance(m, QuantModule)}
    qb = {n: m.record()[1] for n, m in b.named_modules() if isinstance(m, QuantModule)}
    assert qa == qb and qa


# ---- the file, read by hand ------------------------------------------------------------------

def read_raw(path: Path) -> tuple[dict[str, Any], bytes]:
    """(header JSON, data bytes) of a safetensors file, parsed here without safetensors."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def canonical_sha(doc: dict[str, Any]) -> str:
    """The documented metadata checksum: SHA-256 of sorted-key, space-free ASCII JSON."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def rewrite(src: Path, dst: Path, mutate: Callable[[dict[str, Any], dict[str, Tensor]], None],
            fix_checksum: bool = True) -> Path:
    """Copy a glassquant file, letting ``mutate`` edit the metadata and tensors in place."""
    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        doc = json.loads(f.metadata()["glassquant"])
    mutate(doc, tensors)
    if fix_checksum:
        doc.pop("metadata_sha256", None)
        doc["metadata_sha256"] = canonical_sha(doc)
    save_file(tensors, str(dst), metadata={"glassquant": json.dumps(doc)})
    return dst


def raw_sha(t: Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, digits) -> tuple[Path, nn.Module, nn.Module]:
    """(path, float copy, quantized model) of the x86 digits MLP."""
    fresh, model = quantized_mlp("x86", digits)
    path = tmp_path_factory.mktemp("fmt") / "mlp.safetensors"
    save(model, path)
    return path, fresh, model


# ---- round trips -----------------------------------------------------------------------------

@pytest.mark.parametrize("config", ["x86", "w8a8-dynamic", "qnnpack"])
def test_round_trip_is_bit_identical(config, digits, tmp_path):
    fresh, model = quantized_mlp(config, digits)
    path = tmp_path / "m.safetensors"
    save(model, path)
    x = digits.x_test
    rebuilt = load(path)  # no model: from the skeleton
    assert type(rebuilt) is nn.Sequential
    assert [type(m) for m in rebuilt] == [type(m) for m in model]
    assert_same_model(model, rebuilt, x)
    into_float = load(path, model=fresh)  # the float architecture, layers swapped in place
    assert into_float is fresh
    assert_same_model(model, into_float, x)  # its float ReLU after a fused layer is a no-op
    again = load(path, model=load(path))  # an already quantized instance
    assert_same_model(model, again, x)
    if config != "w8a8-dynamic":
        assert set(glassquant.integer_outputs(rebuilt, x)) == {"0", "2"}
    else:
        assert all(isinstance(rebuilt[i], DynamicQuantLinear) for i in (0, 2))


def test_file_layout_read_by_hand(saved):
    path, _, model = saved
    header, data = read_raw(path)
    meta = header.pop("__metadata__")
    assert list(meta) == ["glassquant"]
    doc = json.loads(meta["glassquant"])
    assert doc["format_version"] == 1 and doc["glassquant_version"] == glassquant.__version__
    assert doc["torch_version"] == torch.__version__
    digest = doc.pop("metadata_sha256")
    assert digest == canonical_sha(doc)
    assert [(ly["name"], ly["kind"]) for ly in doc["layers"]] == [("0", "QuantLinear"), ("2", "QuantLinear")]
    assert all(ly["kind"] in LAYER_KINDS for ly in doc["layers"])
    assert doc["layers"][0]["meta"]["x_scale"] == model[0].x_scale  # floats survive JSON exactly
    declared = {f"{ly['name']}.{t['name']}": t for ly in doc["layers"] for t in ly["tensors"]}
    declared.update({t["name"]: t for t in doc["float_tensors"]})
    assert declared.keys() == header.keys()
    for key, t in declared.items():
        lo, hi = header[key]["data_offsets"]
        assert hashlib.sha256(data[lo:hi]).hexdigest() == t["sha256"], key
        assert header[key]["shape"] == t["shape"]
    assert header["0.w_q"]["dtype"] == "I8" and header["0.w_zero_point"]["dtype"] == "I32"
    assert torch.equal(torch.frombuffer(bytearray(data[slice(*header["0.w_q"]["data_offsets"])]),
                                        dtype=torch.int8).reshape(model[0].w_q.shape), model[0].w_q)
    assert doc["skeleton"]["type"] == "Sequential"
    assert [c[1]["type"] for c in doc["skeleton"]["children"]] == ["glassquant", "Identity", "glassquant"]


def test_load_never_unpickles(saved, monkeypatch, digits):
    import pickle

    def forbidden(*a, **k):
        raise AssertionError("pickle used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    path, _, model = saved
    assert_same_model(model, load(path), digits.x_test[:50])


class Net(nn.Module):
    """A custom module: not reconstructible from a skeleton."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.norm = nn.LayerNorm(10)
        self.register_buffer("offset", torch.randn(10))

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.body(x)) + self.offset


def test_nested_custom_module_needs_model(digits, tmp_path):
    torch.manual_seed(1)
    model = Net()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 2)
        model.norm.bias.uniform_(-1, 1)
    glassquant.quantize(model, "x86", [digits.x_train[:256]])
    path = tmp_path / "net.safetensors"
    save(model, path)
    with pytest.raises(FormatError, match="model skeleton is needed"):
        load(path)
    no_offset = Net()
    del no_offset._buffers["offset"]
    with pytest.raises(FormatError, match=r"unexpected \['offset'\]"):
        load(path, model=no_offset)
    assert type(no_offset.body[0]) is nn.Linear  # a mismatch leaves the model untouched
    wrong_dtype = Net().to(torch.float64)
    with pytest.raises(FormatError, match=r"'(norm\.\w+|offset)' is torch\.float32 \[10\] in the file, torch\.float64"):
        load(path, model=wrong_dtype)
    torch.manual_seed(2)
    fresh = Net()  # other random weights: everything must come from the file
    out = load(path, model=fresh)
    assert isinstance(out.body[0], QuantLinear) and isinstance(out.body[2], QuantLinear)
    assert torch.equal(out.norm.weight, model.norm.weight) and torch.equal(out.offset, model.offset)
    assert_same_model(model, out, digits.x_test)


def test_every_skeleton_type_round_trips(tmp_path):
    torch.manual_seed(3)
    lin = QuantLinear.from_float(nn.Linear(6, 4), 0.05, 128, 0.1, 120, name="7")
    model = nn.Sequential(
        nn.Flatten(0, -1), nn.ReLU(inplace=True), nn.Identity(), nn.Dropout(0.25),
        nn.Linear(3, 2, bias=False, dtype=torch.float64),
        nn.ModuleList([
            nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), bias=False, padding_mode="reflect"),
            nn.Conv1d(4, 6, 3, padding="same", groups=2),
            nn.BatchNorm1d(5, eps=1e-3, momentum=None, affine=False),
            nn.BatchNorm2d(4, track_running_stats=False),
        ]),
        nn.Embedding(10, 3, padding_idx=2, max_norm=1.5),
        lin,
        nn.LayerNorm((2, 3), eps=1e-6, bias=False),
    )
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point() and t is not lin.w_scale and t is not lin.bias:
                t.uniform_(-2, 2)
        model[5][2].num_batches_tracked.fill_(7)
    model.eval()
    model[5].train()
    path = tmp_path / "all.safetensors"
    save(model, path)
    out = load(path)
    assert [type(m) for m in out.modules()] == [type(m) for m in model.modules()]
    assert [m.training for m in out.modules()] == [m.training for m in model.modules()]
    sa, sb = model.state_dict(), out.state_dict()
    assert sa.keys() == sb.keys()
    assert all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)
    conv2, conv1, bn1, bn2 = out[5]
    assert (conv2.stride, conv2.padding, conv2.dilation, conv2.padding_mode) == ((2, 1), (1, 0), (1, 2), "reflect")
    assert conv1.padding == "same" and conv1.groups == 2 and conv1.bias is not None
    assert bn1.momentum is None and bn1.eps == 1e-3 and not bn1.affine and bn2.running_mean is None
    assert out[6].padding_idx == 2 and out[6].max_norm == 1.5
    assert out[8].normalized_shape == (2, 3) and out[8].bias is None and out[8].eps == 1e-6
    assert out[3].p == 0.25 and out[1].inplace and (out[0].start_dim, out[0].end_dim) == (0, -1)
    assert out[4].weight.dtype == torch.float64 and out[4].bias is None
    assert all(not t.is_meta for t in [*out.parameters(), *out.buffers()])
    x = torch.randn(5, 6)
    assert torch.equal(out[7](x), lin(x))


def test_every_dtype_and_odd_shapes(tmp_path):
    torch.manual_seed(6)
    model = nn.Sequential(QuantLinear.from_float(nn.Linear(4, 3), 0.1, 10, 0.2, 20, name="0"))
    values = {"f64": torch.randn(2, 3, dtype=torch.float64), "f16": torch.randn(5).half(),
              "bf16": torch.randn(3, 1).bfloat16(), "i64": torch.tensor(-(2**62) - 3),
              "i32": torch.zeros(0, 3, dtype=torch.int32),
              "i16": torch.tensor([-(2**15), 2**15 - 1], dtype=torch.int16),
              "u8": torch.tensor([0, 255], dtype=torch.uint8), "b": torch.tensor([[True, False]]),
              "f32": torch.tensor([float("inf"), -0.0, float("nan")])}
    for k, v in values.items():
        model.register_buffer(k, v)  # own tensors of a container: no skeleton
    path = tmp_path / "dtypes.safetensors"
    save(model, path)
    header, data = read_raw(path)
    for k, v in values.items():
        assert header[k]["shape"] == list(v.shape)
        lo, hi = header[k]["data_offsets"]
        as_numpy = v.view(torch.int16) if v.dtype == torch.bfloat16 else v  # numpy has no bfloat16
        assert data[lo:hi] == as_numpy.numpy().tobytes()
    with pytest.raises(FormatError, match="model skeleton is needed"):
        load(path)
    fresh = nn.Sequential(nn.Linear(4, 3))
    for k, v in values.items():
        fresh.register_buffer(k, torch.zeros_like(v))
    out = load(path, model=fresh)
    for k, v in values.items():
        got = getattr(out, k)
        assert got.dtype == v.dtype and got.shape == v.shape
        assert torch.equal(got.view(torch.uint8), v.view(torch.uint8)) if v.dim() else torch.equal(got, v)


def test_single_layer_at_root(tmp_path):
    torch.manual_seed(4)
    lin = DynamicQuantLinear.from_float(nn.Linear(16, 8), name="root")
    path = tmp_path / "root.safetensors"
    save(lin, path)
    x = torch.randn(4, 16)
    assert torch.equal(load(path)(x), lin(x))
    assert torch.equal(load(path, model=nn.Linear(16, 8))(x), lin(x))


# ---- bad files -------------------------------------------------------------------------------

def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # the layout of a torch.save checkpoint
        z.writestr("archive/data.pkl", PICKLE_BYTES)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def _bad_files(good: bytes) -> dict[str, tuple[bytes, str]]:
    (n,) = struct.unpack("<Q", good[:8])
    rnd = random.Random(0)
    files = {
        "empty": (b"", "too short"),
        "seven bytes": (good[:7], "too short"),
        "length only": (good[:8], "exceeds"),
        "pickle": (PICKLE_BYTES, "pickle"),
        "zip": (_zip_bytes(), "zip"),
        "random": (bytes(rnd.randrange(256) for _ in range(4096)), ""),
        "random after a valid length": (struct.pack("<Q", 100) + bytes(rnd.randrange(256) for _ in range(200)), ""),
        "half header": (good[:8 + n // 2], "exceeds"),
        "header only": (good[:8 + n], "outside"),
        "last byte cut": (good[:-1], "outside"),
        "one byte added": (good + b"\0", "cover"),
        "length 2**64-1": (struct.pack("<Q", 2**64 - 1) + good[8:], "exceeds"),
        "length 0": (struct.pack("<Q", 0) + good[8:], "JSON"),
        "length - 1": (struct.pack("<Q", n - 1) + good[8:], ""),
        "length + 1": (struct.pack("<Q", n + 1) + good[8:], ""),
        "not utf-8": (good[:8] + b"\xff" + good[9:], "UTF-8"),
        "header a list": (struct.pack("<Q", 2) + b"[]", "JSON object"),
        "NaN in header": (struct.pack("<Q", 14) + b'{"a": NaN}    ', "NaN"),
        "deep nesting": (struct.pack("<Q", 200_000) + b"[" * 200_000, "JSON"),
    }
    return files


@pytest.mark.parametrize("case", list(_bad_files(b"\x10" + b"\0" * 7 + b" " * 16)))
def test_bad_file_raises_format_error(case, saved, tmp_path):
    path, _, _ = saved
    blob, words = _bad_files(path.read_bytes())[case]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(blob)
    with pytest.raises(FormatError, match=words or None):
        load(bad)


def _header_file(tmp_path: Path, header: dict[str, Any], data: bytes) -> Path:
    text = json.dumps(header).encode()
    p = tmp_path / "h.safetensors"
    p.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return p


@pytest.mark.parametrize(("entry", "words"), [
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}, "outside"),
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "needs 12"),
    ({"dtype": "PICKLE", "shape": [2], "data_offsets": [0, 8]}, "unknown dtype"),
    ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "non-negative"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "extra": 1}, "exactly"),
    ({"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}, "non-negative"),
    ({"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}, "unknown dtype"),
    ({"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}, r"2\*\*62"),
])
def test_bad_header_entry(entry, words, tmp_path):
    with pytest.raises(FormatError, match=words):
        load(_header_file(tmp_path, {"a": entry}, bytes(8)))


def test_overlapping_offsets_and_missing_metadata(tmp_path):
    e = {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}
    with pytest.raises(FormatError, match="overlapping"):
        load(_header_file(tmp_path, {"a": e, "b": e}, bytes(4)))
    p = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(3)}, str(p))
    with pytest.raises(FormatError, match="without glassquant metadata"):
        load(p)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nope.safetensors")


def test_flipped_tensor_byte_names_the_tensor(saved, tmp_path):
    path, _, _ = saved
    header, _ = read_raw(path)
    blob = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", blob[:8])
    lo, _ = header["2.w_q"]["data_offsets"]
    blob[8 + n + lo + 3] ^= 0x01
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(blob))
    with pytest.raises(FormatError, match=r"'2\.w_q'.*SHA-256"):
        load(bad)


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any], dict[str, Tensor]], None]:
    def mutate(doc: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        node = doc
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    return mutate


def _wrong_w_scale(doc: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    tensors["0.w_scale"] = torch.full((3,), 0.01)
    entry = next(t for t in doc["layers"][0]["tensors"] if t["name"] == "w_scale")
    entry["shape"], entry["sha256"] = [3], raw_sha(tensors["0.w_scale"])


def _changed_bias(doc: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    tensors["2.bias"] = tensors["2.bias"] + 1


def _extra_tensor(doc: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    tensors["stowaway"] = torch.zeros(2)


def _declared_float64(doc: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    doc["layers"][1]["tensors"][3]["dtype"] = "float64"


def _huge_linear(doc: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    doc["skeleton"]["children"][1][1] = {"type": "Linear", "training": False,
                                         "args": {"in_features": 10**6, "out_features": 10**6, "bias": True}}


def _unplaced_layer(doc: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    doc["skeleton"]["children"][2][1] = {"type": "Identity", "training": False, "args": {}}


def _negative_scale(doc: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    doc["layers"][0]["meta"]["x_scale"] = -1.0


@pytest.mark.parametrize(("mutate", "words"), [
    (_set(["format_version"], 2), "written by a newer glassquant"),
    (_set(["format_version"], "1"), "format_version"),
    (_set(["layers", 0, "kind"], "EvilLayer"), "unknown layer kind 'EvilLayer'"),
    (_set(["layers", 0, "kind"], ["QuantLinear"]), "unknown layer kind"),
    (_set(["layers", 0, "tensors", 0, "dtype"], ["int8"]), "bad tensor entry"),
    (_set(["skeleton", "type"], {"Sequential": 1}), "not allowed"),
    (_wrong_w_scale, r"layer '0' \(QuantLinear\) is inconsistent.*w_scale"),
    (_negative_scale, r"layer '0'.*x_scale"),
    (_set(["layers", 1, "meta", "unknown_field"], False), "meta must have exactly"),
    (_changed_bias, r"'2\.bias'.*SHA-256"),
    (_extra_tensor, "not all declared"),
    (_declared_float64, r"'2\.bias' is F32 \[10\] in the header but float64"),
    (_set(["skeleton", "children", 1, 1, "type"], "builtins.eval"), "not allowed"),
    (_set(["skeleton", "children", 1, 1, "args"], {"x": 1}), "exactly the arguments"),
    (_set(["skeleton"], None), "model skeleton is needed"),
    (_huge_linear, "were not in the file|do not match"),
    (_unplaced_layer, "not placed by the skeleton"),
    (_set(["float_tensors"], {}), "exactly the keys"),
    (_set(["layers", 0, "name"], "2"), "unique"),
])
def test_inconsistent_metadata(mutate, words, saved, tmp_path):
    path, _, _ = saved
    bad = rewrite(path, tmp_path / "bad.safetensors", mutate)
    with pytest.raises(FormatError, match=words) as info:
        load(bad)
    if mutate is _wrong_w_scale:
        assert isinstance(info.value.__cause__, ValueError)


def test_metadata_edit_without_checksum_is_caught(saved, tmp_path):
    path, _, _ = saved
    bad = rewrite(path, tmp_path / "bad.safetensors", _set(["layers", 0, "meta", "y_zero_point"], 3),
                  fix_checksum=False)
    with pytest.raises(FormatError, match="checksum"):
        load(bad)


def test_model_that_does_not_match(saved):
    path, _, _ = saved
    with pytest.raises(FormatError, match="no submodule '2'"):
        load(path, model=nn.Sequential(nn.Linear(64, 48)))
    with pytest.raises(FormatError, match=r"missing \['3\.bias', '3\.weight'\]"):
        load(path, model=nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10), nn.LayerNorm(10)))
    with pytest.raises(FormatError, match=r"missing \['3\.bias'"):  # a quantized model with one more layer
        load(path, model=nn.Sequential(nn.Linear(64, 48), nn.ReLU(), DynamicQuantLinear.from_float(nn.Linear(48, 10)),
                                       QuantLinear.from_float(nn.Linear(10, 10), 0.1, 0, 0.1, 0)))
    with pytest.raises(TypeError, match=r"nn\.Module"):
        load(path, model="Sequential")  # type: ignore[arg-type]


def test_save_bad_input(tmp_path):
    with pytest.raises(TypeError, match=r"nn\.Module"):
        save({"w": torch.ones(1)}, tmp_path / "x")  # type: ignore[arg-type]

    class Unregistered(QuantLinear):
        kind = "Unregistered"

    torch.manual_seed(5)
    lin = Unregistered.from_float(nn.Linear(4, 2), 0.1, 0, 0.1, 0)
    with pytest.raises(ValueError, match=r"layer '1'.*not registered"):
        save(nn.Sequential(nn.ReLU(), lin), tmp_path / "x")
    m = nn.Sequential(nn.Linear(2, 2))
    m.register_buffer("z", torch.zeros(2, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"'z'.*complex64"):
        save(m, tmp_path / "x")
    assert not (tmp_path / "x").exists()
