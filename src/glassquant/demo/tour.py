"""``glassquant demo``: the seed post computed, then an int8 MLP proven equal to PyTorch's."""

from __future__ import annotations

import copy
import time

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import convert
from ..analysis.trace import trace_output
from ..interop import torch_ao
from ..nn.linear import QuantLinear
from . import digits, pricetag


def float_bytes(model: torch.nn.Module) -> int:
    """Bytes of a float32 model's parameters."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def int8_bytes(model: torch.nn.Module) -> int:
    """Bytes of a converted model: int8 weights, float32 bias and scales, int32 zero points."""
    total = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += m.w_q.numel() + m.w_scale.numel() * 4 + m.w_zero_point.numel() * 4
            total += 0 if m.bias is None else m.bias.numel() * 4
            total += 4 * 4  # x and y scale (float32) and zero point (int32)
    return total


def digits_part(console: Console, engine: str = "x86") -> dict[str, float | int]:
    """Train (or load) the digits MLP, quantize it both ways, compare on the held-out split."""
    t0 = time.perf_counter()
    data = digits.load_digits_split()
    model = digits.digits_mlp(data)
    calibration = list(data.x_train.split(256))
    cfg = convert.PRESETS[engine]
    assert isinstance(cfg, convert.StaticConfig)
    gq = convert.quantize(copy.deepcopy(model), cfg, calibration)
    with torch.no_grad():
        acc_float = digits.accuracy(model(data.x_test), data.y_test)
        y_gq = gq(data.x_test)
    acc_gq = digits.accuracy(y_gq, data.y_test)
    ints_gq = convert.integer_outputs(gq, data.x_test)
    result: dict[str, float | int] = {"float_accuracy": acc_float, "int8_accuracy": acc_gq,
                                      "float_bytes": float_bytes(model), "int8_bytes": int8_bytes(gq),
                                      "test_samples": len(data.x_test)}
    ok, why = torch_ao.available()
    rows = [("float32 (PyTorch)", f"{acc_float:.2%}", f"{float_bytes(model):,}"),
            (f"int8 glassquant ({engine} dialect)", f"{acc_gq:.2%}", f"{int8_bytes(gq):,}")]
    mismatch_rows = []
    if ok:
        ao = torch_ao.eager_ptq(model, calibration, engine, per_channel=cfg.weight.axis is not None,
                                reduce_range=cfg.activation.bits == 7)
        with torch_ao.engine(engine), torch.no_grad():
            y_ao = ao(data.x_test)
        ints_ao = torch_ao.integer_outputs(ao, data.x_test, engine)
        acc_ao = digits.accuracy(y_ao, data.y_test)
        rows.append((f"int8 torch.ao (engine {engine})", f"{acc_ao:.2%}", "(packed)"))
        total = 0
        for name in ints_gq:
            bad = int((ints_gq[name] != ints_ao[name]).sum())
            total += bad
            mismatch_rows.append((name, f"{ints_gq[name].numel():,}", str(bad)))
        result["torch_ao_accuracy"] = acc_ao
        result["mismatches"] = total
        result["final_outputs_equal"] = int(torch.equal(y_gq, y_ao))
    table = Table(title=f"Digits MLP 64-128-10, {len(data.x_test)} held-out images")
    for col in ("model", "accuracy", "bytes"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    if ok:
        mt = Table(title="glassquant vs torch.ao: output integers per layer")
        for col in ("layer", "integers compared", "mismatching"):
            mt.add_column(col, justify="right")
        for r in mismatch_rows:
            mt.add_row(*r)
        console.print(mt)
        console.print(f"mismatching output integers: [bold]{result['mismatches']}[/bold]; "
                      f"final float outputs identical: {bool(result['final_outputs_equal'])}")
    else:
        console.print(f"[yellow]torch.ao comparison skipped: {why}[/yellow]")
    layer = next(m for m in gq.modules() if isinstance(m, QuantLinear))
    x_q = layer.quantize_input(data.x_test[:1])
    tt = Table(title="One output integer accounted for: layer 0, image 0, neuron 0")
    for col in ("step", "value", "rule"):
        tt.add_column(col)
    for s in trace_output(layer, x_q, 0, 0):
        tt.add_row(escape(s.name), escape(s.value), escape(s.rule))
    console.print(tt)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def run(console: Console | None = None, engine: str = "x86") -> dict[str, float | int]:
    """The whole tour; returns the digits numbers (also printed)."""
    console = console or Console()
    console.rule("[bold]1. The seed post, computed")
    pricetag.render(console)
    console.rule("[bold]2. An int8 MLP, integer for integer equal to PyTorch's")
    return digits_part(console, engine)
