"""glassquant's file format: one safetensors file with JSON metadata; never pickle.

Tensors are stored under their ``state_dict`` keys (``"0.w_q"``, ``"2.bias"``). The
header's ``__metadata__`` holds one key, ``"glassquant"``, whose JSON is::

    {"format_version": 1, "glassquant_version": "0.1.0", "torch_version": "2.13.0+cpu",
     "layers": [{"name": "0", "kind": "QuantLinear", "meta": {"x_scale": 0.0078, ...},
                 "tensors": [{"name": "w_q", "dtype": "int8", "shape": [16, 8], "sha256": "..."}]}],
     "float_tensors": [{"name": "3.weight", "dtype": "float32", "shape": [4, 16], "sha256": "..."}],
     "skeleton": {"type": "Sequential", "training": false, "children": [["0", {...}], ...]},
     "metadata_sha256": "..."}

``layers`` are the outermost :class:`~glassquant.nn.base.QuantModule` of the model (rebuilt
by ``LAYER_KINDS[kind].from_record``); ``float_tensors`` every other ``state_dict`` entry;
``skeleton`` the module tree when every module is in :data:`SKELETON_TYPES` (else
``null``: ``load`` then needs the architecture). ``metadata_sha256`` is the SHA-256 of the
canonical JSON (sorted keys, no spaces) of everything else, so an edited scale is caught
like an edited tensor. Loading parses JSON, calls allow-listed constructors (on the meta
device: a hostile shape allocates nothing) and reads tensors; it runs no code from the file.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from ..nn.base import LAYER_KINDS, QuantModule
from ..smooth import ChannelScale
from .safetensors_header import SAFETENSORS_NAME, FormatError, Header, is_int, loads_strict, read_header, sha256_hex

__all__ = ["FORMAT_VERSION", "SKELETON_TYPES", "FormatError", "load", "load_layers", "save"]

FORMAT_VERSION = 1
METADATA_KEY = "glassquant"
_TOP_KEYS = {"format_version", "glassquant_version", "torch_version", "layers", "float_tensors", "skeleton"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_DEPTH = 64

#: JSON type checks for constructor arguments.
_ARG_CHECKS: dict[str, Any] = {
    "int": is_int,
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "float": lambda v: is_int(v) or isinstance(v, float),
    "opt_int": lambda v: v is None or is_int(v),
    "opt_float": lambda v: v is None or is_int(v) or isinstance(v, float),
    "ints": lambda v: isinstance(v, list) and all(is_int(x) for x in v),
    "padding": lambda v: isinstance(v, str) or (isinstance(v, list) and all(is_int(x) for x in v)),
}
_CONV = {"in_channels": "int", "out_channels": "int", "kernel_size": "ints", "stride": "ints", "padding": "padding",
         "dilation": "ints", "groups": "int", "bias": "bool", "padding_mode": "str"}
_BN = {"num_features": "int", "eps": "float", "momentum": "opt_float", "affine": "bool",
       "track_running_stats": "bool"}

#: Leaf modules ``load`` may construct: type name -> (class, {constructor argument: JSON type}).
#: ``bias`` is recorded as ``module.bias is not None``; every other argument as the attribute.
SKELETON_TYPES: dict[str, tuple[type[nn.Module], dict[str, str]]] = {
    "ReLU": (nn.ReLU, {"inplace": "bool"}),
    "Identity": (nn.Identity, {}),
    "Flatten": (nn.Flatten, {"start_dim": "int", "end_dim": "int"}),
    "Dropout": (nn.Dropout, {"p": "float", "inplace": "bool"}),
    "Linear": (nn.Linear, {"in_features": "int", "out_features": "int", "bias": "bool"}),
    "Conv1d": (nn.Conv1d, _CONV), "Conv2d": (nn.Conv2d, _CONV),
    "BatchNorm1d": (nn.BatchNorm1d, _BN), "BatchNorm2d": (nn.BatchNorm2d, _BN),
    "Embedding": (nn.Embedding, {"num_embeddings": "int", "embedding_dim": "int", "padding_idx": "opt_int",
                                 "max_norm": "opt_float", "norm_type": "float", "scale_grad_by_freq": "bool",
                                 "sparse": "bool"}),
    "LayerNorm": (nn.LayerNorm, {"normalized_shape": "ints", "eps": "float", "elementwise_affine": "bool",
                                 "bias": "bool"}),
    "ChannelScale": (ChannelScale, {"num_features": "int"}),
}
_CONTAINERS: dict[str, type[nn.Module]] = {"Sequential": nn.Sequential, "ModuleList": nn.ModuleList}


def _digest(doc: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``doc`` (sorted keys, no spaces, ASCII)."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _key(layer: str, tensor: str) -> str:
    return f"{layer}.{tensor}" if layer else tensor


def _under(key: str, layers: set[str] | dict[str, Any]) -> bool:
    """Whether ``key`` (dotted) lies inside one of the module paths ``layers`` ("" = root)."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in layers for i in range(len(parts)))


def _show(path: str) -> str:
    return repr(path) if path else "<root>"


# ---- module tree -> JSON skeleton, and back ----------------------------------------------------

def _leaf(type_name: str, args: Any, path: str) -> nn.Module:
    """Construct an allow-listed leaf module from JSON ``args``, on the meta device."""
    cls, spec = SKELETON_TYPES[type_name]
    if not isinstance(args, dict) or set(args) != set(spec):
        raise FormatError(f"skeleton {_show(path)}: {type_name} needs exactly the arguments {sorted(spec)}")
    for a, kind in spec.items():
        if not _ARG_CHECKS[kind](args[a]):
            raise FormatError(f"skeleton {_show(path)}: {type_name} argument {a}={args[a]!r} is not {kind}")
    kwargs = {a: tuple(v) if isinstance(v, list) else v for a, v in args.items()}
    try:
        with torch.device("meta"):
            return cls(**kwargs)
    except Exception as e:  # the constructor is the validator of its arguments
        raise FormatError(f"skeleton {_show(path)}: {type_name}(**{args}) failed: {type(e).__name__}: {e}") from e


def _own_tensors(m: nn.Module) -> dict[str, torch.Size]:
    """Shapes of a module's own parameters and buffers (persistent or not)."""
    return {n: t.shape for n, t in [*m._parameters.items(), *m._buffers.items()] if t is not None}


def describe(module: nn.Module, depth: int = 0) -> dict[str, Any] | None:
    """The JSON skeleton of ``module``'s tree, or ``None`` if some module is not reconstructible."""
    if depth > _MAX_DEPTH:
        return None
    if isinstance(module, QuantModule):
        return {"type": "glassquant", "kind": module.kind, "training": module.training}
    name = type(module).__name__
    if name in _CONTAINERS and type(module) is _CONTAINERS[name] and not _own_tensors(module):
        children = []
        for child_name, child in module._modules.items():
            node = None if child is None else describe(child, depth + 1)
            if node is None:
                return None
            children.append([child_name, node])
        return {"type": name, "training": module.training, "children": children}
    if name in SKELETON_TYPES and type(module) is SKELETON_TYPES[name][0] and not module._modules:
        spec = SKELETON_TYPES[name][1]
        args = {a: getattr(module, a) is not None if a == "bias" else getattr(module, a) for a in spec}
        try:  # as JSON (tuples -> lists), as load will see them; rebuilt, it must have the same tensors
            args = json.loads(json.dumps(args, allow_nan=False))
            fresh = _leaf(name, args, "")
        except (TypeError, ValueError):  # FormatError is a ValueError
            return None
        if _own_tensors(fresh) != _own_tensors(module):
            return None
        return {"type": name, "training": module.training, "args": args}
    return None


def build(node: Any, layers: dict[str, QuantModule], path: str = "", depth: int = 0) -> nn.Module:
    """Rebuild a module tree from a skeleton; glassquant layers are taken (popped) from ``layers``."""
    if depth > _MAX_DEPTH or not isinstance(node, dict) or not isinstance(node.get("training"), bool):
        raise FormatError(f"skeleton {_show(path)}: not a module node (or nested deeper than {_MAX_DEPTH})")
    t = node.get("type")
    t = t if isinstance(t, str) else repr(t)
    module: nn.Module
    if t == "glassquant" and set(node) == {"type", "kind", "training"}:
        if path not in layers or layers[path].kind != node["kind"]:
            raise FormatError(f"skeleton {_show(path)}: no {node['kind']!r} layer of that name in the file")
        module = layers.pop(path)
    elif t in _CONTAINERS and set(node) == {"type", "training", "children"}:
        children = node["children"]
        if not (isinstance(children, list) and all(isinstance(c, list) and len(c) == 2 and isinstance(c[0], str)
                                                   for c in children)):
            raise FormatError(f"skeleton {_show(path)}: children must be [name, node] pairs")
        names = [c[0] for c in children]
        if t == "ModuleList" and names != [str(i) for i in range(len(names))]:
            raise FormatError(f"skeleton {_show(path)}: ModuleList children must be named 0..{len(names) - 1}")
        built = collections.OrderedDict((n, build(c, layers, _key(path, n), depth + 1)) for n, c in children)
        if len(built) != len(children):
            raise FormatError(f"skeleton {_show(path)}: duplicate child names")
        try:
            module = nn.Sequential(built) if t == "Sequential" else nn.ModuleList(built.values())
        except Exception as e:  # add_module rejects names with '.', '' or clashing attributes
            raise FormatError(f"skeleton {_show(path)}: bad child names {names}: {e}") from e
    elif t in SKELETON_TYPES and set(node) == {"type", "training", "args"}:
        module = _leaf(t, node["args"], path)
    else:
        raise FormatError(f"skeleton {_show(path)}: module type {t!r} is not allowed (or has wrong fields); "
                          f"allowed: glassquant layers, {', '.join([*_CONTAINERS, *SKELETON_TYPES])}")
    module.training = node["training"]
    return module


# ---- save ----------------------------------------------------------------------------------------

def _plain(t: Any, key: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"state_dict entry {key!r} is a {type(t).__name__}, not a tensor; it cannot be saved")
    if str(t.dtype).removeprefix("torch.") not in SAFETENSORS_NAME:
        raise ValueError(f"tensor {key!r}: dtype {t.dtype} cannot be saved (supported: {sorted(SAFETENSORS_NAME)})")
    return t.detach().cpu().contiguous().clone()


def _tensor_info(name: str, t: Tensor) -> dict[str, Any]:
    return {"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
            "sha256": sha256_hex(t)}


def quant_layers(model: nn.Module) -> dict[str, QuantModule]:
    """The outermost glassquant layers of ``model`` by dotted name (every path of a shared one)."""
    out: dict[str, QuantModule] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, QuantModule) and not _under(name, out):
            out[name] = m
    return out


def save(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write ``model`` (glassquant layers + float tensors + skeleton) to one safetensors file.

    Raises ``TypeError`` if ``model`` is not an ``nn.Module``, ``ValueError`` naming the
    layer or tensor for an unregistered layer, non-JSON metadata or an unsupported dtype.
    The file is written next to ``path`` and renamed over it (never half-written).
    """
    from .. import __version__

    if not isinstance(model, nn.Module):
        raise TypeError(f"save: model must be an nn.Module, got {type(model).__name__}")
    tensors: dict[str, Tensor] = {}
    layer_docs = []
    layers = quant_layers(model)
    for name, m in layers.items():
        if LAYER_KINDS.get(m.kind) is not type(m):
            raise ValueError(f"layer {_show(name)}: {type(m).__name__} (kind {m.kind!r}) is not registered; "
                             "decorate it with glassquant.nn.base.register")
        record, meta = m.record()
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"layer {_show(name)}: record() metadata is not plain JSON: {e}") from e
        infos = []
        for t_name, t in record.items():
            if not t_name.isidentifier() or t_name in meta:
                raise ValueError(f"layer {_show(name)}: tensor name {t_name!r} is not an identifier apart from meta")
            tensors[_key(name, t_name)] = _plain(t, _key(name, t_name))
            infos.append(_tensor_info(t_name, tensors[_key(name, t_name)]))
        layer_docs.append({"name": name, "kind": m.kind, "meta": meta, "tensors": infos})
    float_docs = []
    for key, t in model.state_dict().items():
        if not _under(key, layers):
            tensors[key] = _plain(t, key)
            float_docs.append(_tensor_info(key, tensors[key]))
    doc = {"format_version": FORMAT_VERSION, "glassquant_version": __version__, "torch_version": torch.__version__,
           "layers": layer_docs, "float_tensors": float_docs, "skeleton": describe(model)}
    doc = json.loads(json.dumps(doc))  # exactly what load will parse
    doc["metadata_sha256"] = _digest(doc)
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(doc, separators=(",", ":"))})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---- load ----------------------------------------------------------------------------------------

def _tensor_spec(e: Any, where: str) -> tuple[str, str, tuple[int, ...], str]:
    """``(name, dtype, shape, sha256)`` of a metadata tensor entry, checked."""
    if not isinstance(e, dict) or set(e) != {"name", "dtype", "shape", "sha256"}:
        raise FormatError(f"{where}: tensor entry must have exactly name, dtype, shape, sha256")
    name, dtype, shape, sha = e["name"], e["dtype"], e["shape"], e["sha256"]
    if not (isinstance(name, str) and isinstance(dtype, str) and dtype in SAFETENSORS_NAME and isinstance(shape, list)
            and all(is_int(s) and s >= 0 for s in shape) and isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise FormatError(f"{where}: bad tensor entry {str(e)[:200]}")
    return name, dtype, tuple(shape), sha


Spec = tuple[str, tuple[int, ...], str]  # (dtype name, shape, sha256 hex) of one tensor


def check_metadata(header: Header, label: str) -> tuple[dict[str, Any], dict[str, Spec]]:
    """The glassquant metadata of a checked header, validated against the header's tensors:
    ``(document, {tensor key: (dtype, shape, sha256)})``."""
    if METADATA_KEY not in header.metadata:
        raise FormatError(f"{label}: a safetensors file without glassquant metadata (not written by glassquant.save)")
    doc = loads_strict(header.metadata[METADATA_KEY], f"{label}: glassquant metadata")
    if not isinstance(doc, dict) or not is_int(doc.get("format_version")):
        raise FormatError(f"{label}: glassquant metadata has no integer format_version")
    if doc["format_version"] > FORMAT_VERSION:
        raise FormatError(f"{label}: written by a newer glassquant (format_version {doc['format_version']}; this "
                          f"version reads up to {FORMAT_VERSION}); upgrade glassquant")
    if doc["format_version"] < 1:
        raise FormatError(f"{label}: unknown format_version {doc['format_version']}")
    try:
        digest_ok = doc.pop("metadata_sha256", None) == _digest(doc)
    except RecursionError as err:
        raise FormatError(f"{label}: glassquant metadata nested too deeply") from err
    if not digest_ok:
        raise FormatError(f"{label}: metadata checksum mismatch: the glassquant metadata was modified or corrupted")
    if set(doc) != _TOP_KEYS or not isinstance(doc["layers"], list) or not isinstance(doc["float_tensors"], list):
        raise FormatError(f"{label}: glassquant metadata must have exactly the keys {sorted(_TOP_KEYS)}")
    specs: dict[str, Spec] = {}
    names: set[str] = set()
    for layer in doc["layers"]:
        if not isinstance(layer, dict) or set(layer) != {"name", "kind", "meta", "tensors"}:
            raise FormatError(f"{label}: a layer entry must have exactly name, kind, meta, tensors")
        name, kind, meta, infos = layer["name"], layer["kind"], layer["meta"], layer["tensors"]
        where = f"{label}: layer {name!r}"
        if not isinstance(name, str) or name in names or _under(name, names) or any(_under(n, {name}) for n in names):
            raise FormatError(f"{where}: layer names must be unique strings, none inside another")
        names.add(name)
        if not isinstance(kind, str) or kind not in LAYER_KINDS:
            raise FormatError(f"{where}: unknown layer kind {kind!r} (known: {sorted(LAYER_KINDS)})")
        fields = set(LAYER_KINDS[kind].meta_fields)
        if not isinstance(meta, dict) or set(meta) != fields:
            raise FormatError(f"{where}: meta must have exactly the fields {sorted(fields)}")
        if not isinstance(infos, list):
            raise FormatError(f"{where}: tensors must be a list")
        for e in infos:
            t_name, dtype, shape, sha = _tensor_spec(e, where)
            if not t_name.isidentifier() or t_name in fields or _key(name, t_name) in specs:
                raise FormatError(f"{where}: bad or repeated tensor name {t_name!r}")
            specs[_key(name, t_name)] = (dtype, shape, sha)
    for e in doc["float_tensors"]:
        key, dtype, shape, sha = _tensor_spec(e, f"{label}: float tensor")
        if key in specs or _under(key, names):
            raise FormatError(f"{label}: float tensor {key!r} repeated or inside a glassquant layer")
        specs[key] = (dtype, shape, sha)
    if set(specs) != set(header.tensors):
        raise FormatError(f"{label}: tensors in the file {sorted(set(header.tensors) ^ set(specs))[:5]} are not "
                          "all declared in the metadata, or declared ones are missing")
    for key, (dtype, shape, _) in specs.items():
        entry = header.tensors[key]
        if entry.dtype != SAFETENSORS_NAME[dtype] or entry.shape != shape:
            raise FormatError(f"{label}: tensor {key!r} is {entry.dtype} {list(entry.shape)} in the header but "
                              f"{dtype} {list(shape)} in the metadata")
    return doc, specs


def _read_tensors(path: str, specs: dict[str, Spec], label: str) -> dict[str, Tensor]:
    """Every tensor through safetensors' reader, each checked against its dtype, shape and SHA-256."""
    out: dict[str, Tensor] = {}
    try:
        with safe_open(path, framework="pt") as f:
            for key in specs:
                out[key] = f.get_tensor(key).clone()
    except (SafetensorError, RuntimeError, ValueError, OverflowError) as e:  # the file changed since its check
        raise FormatError(f"{label}: safetensors could not read the file: {type(e).__name__}: {e}") from e
    for key, (dtype, shape, sha) in specs.items():
        t = out[key]
        if str(t.dtype).removeprefix("torch.") != dtype or tuple(t.shape) != shape:
            raise FormatError(f"{label}: tensor {key!r} read as {t.dtype} {list(t.shape)}, declared {dtype} {shape}")
        if sha256_hex(t) != sha:
            raise FormatError(f"{label}: tensor {key!r}: SHA-256 mismatch; its bytes were modified or corrupted")
    return out


def _build_layer(layer: dict[str, Any], tensors: dict[str, Tensor], label: str) -> QuantModule:
    name, kind = layer["name"], layer["kind"]
    own = {e["name"]: tensors[_key(name, e["name"])] for e in layer["tensors"]}
    try:
        built = LAYER_KINDS[kind].from_record(own, layer["meta"])
    except Exception as e:  # the layer's constructor is the validator of its record
        raise FormatError(f"{label}: layer {_show(name)} ({kind}) is inconsistent: {type(e).__name__}: {e}") from e
    if set(built.state_dict()) != set(own):
        raise FormatError(f"{label}: layer {_show(name)} ({kind}) rebuilt with tensors {sorted(built.state_dict())}, "
                          f"file has {sorted(own)}")
    return built


def _check_floats(model: nn.Module, floats: dict[str, Tensor], layers: dict[str, Any], assign: bool,
                  label: str) -> None:
    """The float tensors must match ``model``'s outside ``layers``: same keys, shapes and (unless
    ``assign``) dtypes."""
    expected = {k: v for k, v in model.state_dict().items() if not _under(k, layers)}
    missing, unexpected = sorted(expected.keys() - floats.keys()), sorted(floats.keys() - expected.keys())
    if missing or unexpected:
        raise FormatError(f"{label}: float tensors do not match the model: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}")
    for key, t in floats.items():
        want = expected[key]
        if not isinstance(want, Tensor) or want.shape != t.shape or (not assign and want.dtype != t.dtype):
            got = f"{getattr(want, 'dtype', type(want).__name__)} {list(getattr(want, 'shape', []))}"
            raise FormatError(f"{label}: tensor {key!r} is {t.dtype} {list(t.shape)} in the file, {got} in the model")


def _load_floats(model: nn.Module, floats: dict[str, Tensor], assign: bool, label: str) -> None:
    """Load checked float tensors (``assign``: the file's tensors replace meta-device ones)."""
    try:
        model.load_state_dict(floats, strict=False, assign=assign)
    except RuntimeError as e:
        raise FormatError(f"{label}: loading float tensors failed: {e}") from e
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise FormatError(f"{label}: tensors {left[:5]} were not in the file")


def load_layers(path: str | os.PathLike[str]) -> dict[str, QuantModule]:
    """Only the glassquant layers of a saved model, by dotted name, checked as :func:`load`
    checks them — no architecture needed (``verify`` and ``explain`` work on layers)."""
    path = os.fspath(path)
    label = repr(path)
    with open(path, "rb") as f:
        header = read_header(f, os.fstat(f.fileno()).st_size, label)
    doc, specs = check_metadata(header, label)
    tensors = _read_tensors(path, specs, label)
    return {layer["name"]: _build_layer(layer, tensors, label) for layer in doc["layers"]}


def load(path: str | os.PathLike[str], model: nn.Module | None = None) -> nn.Module:
    """Read a file written by :func:`save`; every byte is checked before anything is built.

    Without ``model`` the module tree is rebuilt from the file's skeleton (``FormatError``
    if the saved model was not made only of :data:`SKELETON_TYPES` and glassquant layers).
    With ``model`` (the float architecture, or a quantized instance), its submodules at the
    layers' names are replaced, in place, by the rebuilt glassquant layers and the other
    tensors are loaded strictly (all checked first: a mismatch leaves ``model`` untouched);
    ``model`` is returned (the layer itself if the file holds one layer at the root). A
    corrupted file raises only :class:`FormatError`; a missing file ``FileNotFoundError``.
    """
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"load: model must be an nn.Module or None, got {type(model).__name__}")
    path = os.fspath(path)
    label = repr(path)
    with open(path, "rb") as f:
        header = read_header(f, os.fstat(f.fileno()).st_size, label)
    doc, specs = check_metadata(header, label)
    tensors = _read_tensors(path, specs, label)
    layers = {layer["name"]: _build_layer(layer, tensors, label) for layer in doc["layers"]}
    floats = {e["name"]: tensors[e["name"]] for e in doc["float_tensors"]}
    if model is None:
        if doc["skeleton"] is None:
            raise FormatError(f"{label}: the saved model is not made only of reconstructible modules, so the file "
                              "has no skeleton; a model skeleton is needed: pass model=<the float architecture>")
        placed = dict(layers)
        try:
            model = build(doc["skeleton"], placed)
        except FormatError as e:
            raise FormatError(f"{label}: {e}") from e
        if placed:
            raise FormatError(f"{label}: layers {sorted(placed)[:5]} are not placed by the skeleton")
        _check_floats(model, floats, layers, assign=True, label=label)
        _load_floats(model, floats, assign=True, label=label)
        return model
    if "" in layers:  # the only layer, and no float tensors (check_metadata)
        return layers[""].train(model.training)
    old: dict[str, nn.Module] = {}
    for name, layer in layers.items():  # all names resolved before the model is touched
        try:
            old[name] = model.get_submodule(name)
        except AttributeError as e:
            raise FormatError(f"{label}: the model has no submodule {name!r} for layer {name!r} ({layer.kind})") from e
    _check_floats(model, floats, layers, assign=False, label=label)
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.train(old[name].training))
    _load_floats(model, floats, assign=False, label=label)
    return model
