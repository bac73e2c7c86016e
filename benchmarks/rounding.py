"""Benchmark: rounding of weight-only integers — RTN vs GPTQ vs AdaRound at 4 and 3 bits.

Weight grids (activations stay float): asymmetric unsigned ``bits``-bit, eq. 2 min/max qparams,
per group of 128 along K for all-MiniLM-L6-v2 (37 Linear layers), per output channel for the
digits MLP (2 Linear) and the digits CNN (BatchNorms folded, conv1, conv2, fc). Only the rounding
differs between the three methods (GPTQ also moves not-yet-rounded weights, and picks a group's
qparams from its updated weights).

- RTN: eq. 3, half to even (``affine.quantize``).
- GPTQ: :func:`gptq_grid` below, ``glassquant.gptq``'s algorithm (G1-G3, act_order, percdamp
  0.1 as the ``w4g*-weight-only`` presets) on any grid; at 4 bits it is checked here, integer
  for integer, against ``glassquant.gptq.gptq_quantize`` (which only targets the int4 grid).
- AdaRound: ``glassquant.adaround`` with its default ``AdaRoundConfig`` (1000 Adam steps per layer).

Evaluation arithmetic: every Linear runs as the glassquant layer that stores its grid
(``adaround.weight_only_linear``: int4 with group 32/64/128 or one group per row as
``WeightOnlyLinear``, any other 2-8-bit grid such as 3 bits as ``PackedWeightOnlyLinear``, the codes
packed b bits each); convolutions (the digits CNN's conv1 and conv2) keep the float layer holding
the dequantized integers (eq. 1) — a weight-only layer's arithmetic up to the summation order.
The "layer" column says which.
Metrics: test accuracy (digits), mean / min cosine and top-1 neighbour agreement vs fp32 over
tests/models/data/sentences.txt (MiniLM, calibrated on calibration.txt); summed output
reconstruction error (A4) over the layers relative to RTN's, on the calibration inputs and (digits)
on held-out test inputs of each layer in the float model.

QAT (``--sections qat``): the digits MLP with b-bit weights / uint8 activations as a static x86
integer model — RTN PTQ beside LSQ QAT (``glassquant.qat``); ``qat-<machine>-<date>.json``.

Run: ``python benchmarks/rounding.py [--quick] [--sections digits minilm qat]``; writes
``benchmarks/results/rounding-<machine>-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import common  # benchmarks/ is on sys.path when a script here runs
import torch
from torch import Tensor, nn

from glassquant.adaround import (
    AdaRoundConfig,
    RoundedWeight,
    adaround_weight,
    collect_grams,
    dequantized_module,
    reconstruction_error,
    weight_only_linear,
)
from glassquant.affine import dequantize, quantize
from glassquant.gptq import _current_columns, dampen, inverse_cholesky_upper
from glassquant.qparams import choose_qparams, observe_range
from glassquant.scheme import QScheme

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "models" / "data"
PERCDAMP = 0.1  # the w4g*-weight-only presets' GPTQ dampening
METHODS = ("RTN", "GPTQ", "AdaRound")


def grid(bits: int, group_size: int | None) -> QScheme:
    """Asymmetric unsigned ``bits``-bit weights, per group along K (``group_size``) or per output channel."""
    if group_size is None:
        return QScheme(bits=bits, signed=False, symmetric=False, axis=0)
    return QScheme(bits=bits, signed=False, symmetric=False, group_size=group_size)


def _row_groups(scheme: QScheme, k: int) -> int:
    return k if scheme.granularity == "per_channel" else int(scheme.group_size or k)


def rtn(weight: Tensor, scheme: QScheme) -> tuple[Tensor, Tensor, Tensor]:
    """Round to nearest: eq. 2 min/max qparams, eq. 3 half to even. ``(q, scale, zero_point)``."""
    w = weight.detach().to(torch.float32)
    scale, zp = choose_qparams(*observe_range(w, scheme), scheme)
    return quantize(w, scale, zp, scheme), scale, zp


def gptq_grid(weight: Tensor, hessian: Tensor, scheme: QScheme, act_order: bool = True,
              percdamp: float = PERCDAMP, block_size: int = 128) -> tuple[Tensor, Tensor, Tensor]:
    """``glassquant.gptq.gptq_quantize`` on any asymmetric grid with groups along K (per channel = one
    group of K): the same steps, with the group's qparams from ``choose_qparams`` on ``scheme``.

    Returns ``(q scheme.dtype (N, K), scale float32 (N, K/g), zero_point int32 (N, K/g))``
    (per channel: scale and zero point (N,)).
    """
    n, k = weight.shape
    g = _row_groups(scheme, k)
    group_scheme = replace(scheme, axis=None, group_size=g)
    column = replace(scheme, axis=None, group_size=1)
    h, dead = dampen(hessian, percdamp)
    w = weight.detach().to(torch.float64).clone()
    w[:, dead] = 0.0
    if act_order:
        diag = torch.where(dead, 1.0, torch.diagonal(hessian).detach().to(torch.float64))
        perm = torch.argsort(diag, descending=True, stable=True)
    else:
        perm = torch.arange(k)
    invperm = torch.argsort(perm)
    w = w[:, perm]
    u = inverse_cholesky_upper(h[perm][:, perm])
    groups = k // g
    scale = torch.zeros(n, groups, dtype=torch.float32)
    zero_point = torch.zeros(n, groups, dtype=torch.int32)
    started = [False] * groups
    q = torch.zeros(n, k, dtype=scheme.dtype)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = w[:, i1:i2].clone()  # (N, B)
        err1 = torch.zeros_like(w1)
        for j in range(i1, i2):
            gi = int(perm[j]) // g
            if not started[gi]:
                pos = invperm[gi * g:(gi + 1) * g]
                current = _current_columns(w, w1, err1, u, pos, i1, j).to(torch.float32)  # (N, g)
                s, zp = choose_qparams(*observe_range(current, group_scheme), group_scheme)
                scale[:, gi], zero_point[:, gi] = s[:, 0], zp[:, 0]
                started[gi] = True
            col = w1[:, j - i1:j - i1 + 1]  # (N, 1)
            s_g, zp_g = scale[:, gi:gi + 1], zero_point[:, gi:gi + 1]
            q_col = quantize(col.to(torch.float32), s_g, zp_g, column)
            wq = dequantize(q_col, s_g, zp_g, column).to(torch.float64)
            q[:, j] = q_col[:, 0]
            e = (col - wq) / u[j, j]
            w1[:, j - i1:] -= e * u[j, j:i2]  # (N, 1) * (B',) -> (N, B')
            err1[:, j - i1] = e[:, 0]
        w[:, i2:] -= err1 @ u[i1:i2, i2:]  # (N, B) @ (B, K - i2) -> (N, K - i2)
    q = q[:, invperm]
    if scheme.granularity == "per_channel":
        return q, scale[:, 0].clone(), zero_point[:, 0].clone()
    return q, scale, zero_point


def round_layers(model: nn.Module, grams: dict[str, Tensor], scheme: QScheme, method: str,
                 config: AdaRoundConfig) -> dict[str, RoundedWeight]:
    """Integers of every layer in ``grams`` by ``method``; errors (A4) on the calibration Gram matrices."""
    out: dict[str, RoundedWeight] = {}
    for n, g in grams.items():
        m = model.get_submodule(n)
        w = flat_weight(model, n)
        if method == "AdaRound":
            r = adaround_weight(w, g, scheme, config, f"{n}.weight")
        else:
            q, s, zp = rtn(w, scheme) if method == "RTN" else gptq_grid(w, 2.0 * g, scheme)
            r = RoundedWeight(q, s, zp, scheme, tuple(w.shape), rtn_error(w, scheme, g), float("nan"))
            r.error = layer_error(r, w, g)
        r.shape = tuple(m.weight.shape)
        out[n] = r
    return out


def flat_weight(model: nn.Module, name: str) -> Tensor:
    """A layer's float32 weight as (N, K): a conv's (O, C, kh, kw) as (O, C*kh*kw)."""
    w = model.get_submodule(name).weight.detach()
    return w.reshape(w.shape[0], -1).to(torch.float32)  # (N, K)


def rtn_error(weight: Tensor, scheme: QScheme, gram: Tensor) -> float:
    """(A4) of round to nearest."""
    return layer_error(RoundedWeight(*rtn(weight, scheme), scheme, tuple(weight.shape), 0.0, 0.0), weight, gram)


def layer_error(r: RoundedWeight, weight: Tensor, gram: Tensor) -> float:
    """(A4) in float64 for integers ``r`` of ``weight`` (N, K)."""
    wq = dequantize(r.w_q, r.scale, r.zero_point, r.scheme).to(torch.float64)
    return float(reconstruction_error(weight.to(torch.float64) - wq, gram.to(torch.float64)))


def build(model: nn.Module, rounded: dict[str, RoundedWeight]) -> tuple[nn.Module, str]:
    """A copy of ``model`` with each layer holding its integers: a weight-only layer (packed) for a
    Linear, the float layer with dequantized weights for a convolution. Returns ``(model, layer kinds)``."""
    q = copy.deepcopy(model)
    kinds = set()
    for n, r in rounded.items():
        m = model.get_submodule(n)
        try:
            new = weight_only_linear(m, r, n) if isinstance(m, nn.Linear) else None
        except ValueError:
            new = None
        kinds.add(type(new).__name__ if new is not None else "float (dequantized)")
        parent, _, child = n.rpartition(".")
        setattr(q.get_submodule(parent) if parent else q, child, new if new is not None else dequantized_module(m, r))
    return q.eval(), " + ".join(sorted(kinds))


def compare(name: str, model: nn.Module, grams: dict[str, Tensor], held_out: dict[str, Tensor] | None,
            bits: tuple[int, ...], group_size: int | None, evaluate: Callable[[nn.Module], dict[str, float]],
            config: AdaRoundConfig, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One row per (bits, method): metrics, relative reconstruction errors, seconds."""
    rows = [{"model": name, "bits": "fp32", "method": "float", **evaluate(model)}]
    for b in bits:
        scheme = grid(b, group_size)
        for method in METHODS:
            t0 = time.perf_counter()
            rounded = round_layers(model, grams, scheme, method, config)
            seconds = time.perf_counter() - t0
            q, kinds = build(model, rounded)
            row: dict[str, Any] = {"model": name, "bits": b, "method": method,
                                   "grid": f"uint{b} asym " + (f"g{group_size}" if group_size else "per-channel"),
                                   "layer": kinds, "seconds": seconds, **evaluate(q),
                                   "calib_error_vs_rtn": sum(r.error for r in rounded.values())
                                   / sum(r.error_rtn for r in rounded.values())}
            if held_out is not None:
                err = sum(layer_error(r, flat_weight(model, n), held_out[n]) for n, r in rounded.items())
                err_rtn = sum(rtn_error(flat_weight(model, n), scheme, held_out[n]) for n in rounded)
                row["test_error_vs_rtn"] = err / err_rtn
            log(f"{name} {b}-bit {method:8s} " + " ".join(f"{k}={common.fmt(v) if isinstance(v, float) else v}"
                                                         for k, v in row.items() if k not in ("model", "bits",
                                                                                              "method")))
            rows.append(row)
    return rows


def check_gptq_grid(model: nn.Module, grams: dict[str, Tensor], group_size: int | None) -> int:
    """``gptq_grid`` at 4 bits equals ``glassquant.gptq.gptq_quantize`` integer for integer; returns the count."""
    from glassquant.gptq import gptq_quantize

    compared = 0
    for n, g in grams.items():
        w = flat_weight(model, n)
        gs = group_size or w.shape[1]
        if gs not in (w.shape[1], 32, 64, 128) or w.shape[1] % gs:
            continue
        q, s, zp = gptq_grid(w, 2.0 * g, grid(4, group_size))
        q_ref, s_ref, zp_ref = gptq_quantize(w, 2.0 * g, 4, gs, act_order=True, percdamp=PERCDAMP)
        assert torch.equal(q.to(torch.uint8), q_ref), n
        assert torch.equal(s.reshape(s_ref.shape), s_ref) and torch.equal(zp.reshape(zp_ref.shape).to(torch.uint8),
                                                                          zp_ref), n
        compared += q.numel()
    return compared


# --------------------------------------------------------------------------- models
def digits_section(config: AdaRoundConfig, log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict]:
    from glassquant.demo import digits, digits_cnn
    from glassquant.fold import fuse_modules

    data = digits.load_digits_split()
    rows: list[dict[str, Any]] = []
    checks: dict[str, int] = {}
    mlp = digits.digits_mlp(data)
    cnn = copy.deepcopy(digits_cnn.digits_cnn(data)).eval()
    fuse_modules(cnn, digits_cnn.CONV_BN_RELU)
    types = (nn.Linear, nn.Conv2d)
    for name, model, x_train, x_test in (
            ("digits MLP", mlp, data.x_train, data.x_test),
            ("digits CNN", cnn, digits_cnn.as_images(data.x_train), digits_cnn.as_images(data.x_test))):
        grams = collect_grams(model, [x_train], types=types)
        held_out = collect_grams(model, [x_test], types=types)
        checks[name] = check_gptq_grid(model, grams, None)

        def evaluate(m: nn.Module, x: Tensor = x_test) -> dict[str, float]:
            with torch.no_grad():
                return {"accuracy": digits.accuracy(m(x), data.y_test)}

        rows += compare(name, model, grams, held_out, (4, 3), None, evaluate, config, log)
    return rows, checks


def minilm_section(config: AdaRoundConfig, log: Callable[[str], None], bits: tuple[int, ...]
                   ) -> tuple[list[dict[str, Any]], dict]:
    from glassquant.models import minilm

    model = minilm.load()
    sentences = (DATA / "sentences.txt").read_text().splitlines()
    lines = (DATA / "calibration.txt").read_text().splitlines()
    batches = [model.tokenize(lines[i:i + 16]) for i in range(0, len(lines), 16)]
    reference = minilm.encode(model, sentences)
    grams = collect_grams(model, batches, lambda m, f: m(f))
    checks = {"MiniLM": check_gptq_grid(model, dict(list(grams.items())[:2]), 128)}

    def evaluate(m: nn.Module) -> dict[str, float]:
        if m is model:
            return {"mean_cosine": 1.0, "min_cosine": 1.0, "top1": 1.0}
        a = minilm.agreement(reference, minilm.encode(m, sentences))
        return {"mean_cosine": a.mean_cosine, "min_cosine": a.min_cosine, "top1": a.top1_agreement}

    return compare("MiniLM-L6", model, grams, None, bits, 128, evaluate, config, log), checks


def qat_section(log: Callable[[str], None], weight_bits: tuple[int, ...] = (3, 2), epochs: int = 10,
                lr: float = 1e-3) -> list[dict[str, Any]]:
    """digits MLP, b-bit weights / uint8 activations, static x86 integer model: RTN PTQ (min/max and MSE
    weight scales, no training) and LSQ QAT (``glassquant.qat``), test accuracy of the converted model."""
    from glassquant.demo import digits
    from glassquant.qat import convert_qat, prepare_qat, train_classifier

    data = digits.load_digits_split()
    mlp = digits.digits_mlp(data)
    calibration = list(data.x_train.split(200))

    def accuracy(m: nn.Module) -> float:
        with torch.no_grad():
            return digits.accuracy(m(data.x_test), data.y_test)

    rows: list[dict[str, Any]] = [{"model": "digits MLP", "weights": "fp32", "method": "float",
                                   "accuracy": accuracy(mlp)}]
    for b in weight_bits:
        for method, init in (("RTN PTQ (min/max scales)", "minmax"), ("RTN PTQ (MSE scales)", "mse"),
                             (f"QAT (LSQ, {epochs} epochs)", "mse")):
            t0 = time.perf_counter()
            m = prepare_qat(copy.deepcopy(mlp), b, 8, calibration=calibration, weight_init=init)
            if method.startswith("QAT"):
                m = train_classifier(m, data.x_train, data.y_train, epochs=epochs, lr=lr, seed=0)
            fake = accuracy(m.eval())
            q = convert_qat(m, "x86")
            row = {"model": "digits MLP", "weights": f"int{b} per-channel sym", "activations": "uint8 affine",
                   "method": method, "accuracy": accuracy(q), "fake_quant_accuracy": fake,
                   "seconds": time.perf_counter() - t0}
            log(" ".join(f"{k}={v}" for k, v in row.items()))
            rows.append(row)
    return rows


QAT_COLUMNS = [("model", "model"), ("weights", "weights"), ("activations", "activations"), ("method", "method"),
               ("accuracy", "test acc. (integer model)"), ("fake_quant_accuracy", "test acc. (fake quant)"),
               ("seconds", "s")]


COLUMNS = [("model", "model"), ("bits", "bits"), ("method", "method"), ("accuracy", "test acc."),
           ("mean_cosine", "mean cos"), ("min_cosine", "min cos"), ("top1", "top-1"),
           ("calib_error_vs_rtn", "recon. err. / RTN (calib.)"), ("test_error_vs_rtn", "recon. err. / RTN (test)"),
           ("layer", "layer"), ("seconds", "s")]


def _write(stem: str, machine: common.Machine, doc: dict[str, Any], title: str, extra: dict[str, Any],
           rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {"machine": asdict(machine), "date": dt.datetime.now().isoformat(timespec="seconds"),
           "threads": torch.get_num_threads(), **doc, "rows": rows}
    (common.RESULTS / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str))
    md = [f"# {title} ({doc['date']})", "", common.machine_markdown(machine, {"threads": doc["threads"], **extra}),
          "", common.markdown_table(rows, columns), ""] + [f"- {n}" for n in doc.get("notes", [])]
    (common.RESULTS / f"{stem}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {common.RESULTS / stem}.json and .md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 AdaRound iterations, MiniLM at 4 bits only")
    ap.add_argument("--sections", nargs="+", choices=("digits", "minilm", "qat"), default=["digits", "minilm"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = AdaRoundConfig(iterations=100) if args.quick else AdaRoundConfig()
    machine = common.machine_info()
    suffix = f"{machine.name}-{dt.date.today().isoformat()}" + ("-quick" if args.quick else "")
    rows: list[dict[str, Any]] = []
    checks: dict[str, int] = {}
    notes: list[str] = []
    if "digits" in args.sections:
        rows, checks = digits_section(config, print)
    if "minilm" in args.sections:
        try:
            more, c = minilm_section(config, print, (4,) if args.quick else (4, 3))
            rows += more
            checks.update(c)
        except (RuntimeError, FileNotFoundError, ImportError) as e:
            notes.append(f"MiniLM skipped: {e}")
    if rows:
        _write(f"rounding-{suffix}", machine,
               {"adaround_config": asdict(config), "gptq": {"act_order": True, "percdamp": PERCDAMP},
                "gptq_grid_equals_glassquant_gptq_at_4_bits": checks, "notes": notes},
               "Rounding: RTN vs GPTQ vs AdaRound", {
                   "AdaRound": asdict(config),
                   "GPTQ": f"act_order, percdamp {PERCDAMP}; equals glassquant.gptq at 4 bits on {checks} integers"},
               rows, COLUMNS)
    if "qat" in args.sections:
        _write(f"qat-{suffix}", machine, {"epochs": 10, "lr": 1e-3, "seed": 0}, "QAT on the digits MLP",
               {"training": "Adam lr 1e-3, 10 epochs, batch 64, seed 0, one thread"}, qat_section(print), QAT_COLUMNS)


if __name__ == "__main__":
    main()
