"""Equivalence table: every runtime glassquant can run, layer by layer, against glassquant's
dialect of it — mismatching values over values compared, measured in one run.

Layers: the digits MLP (static x86 preset: 64-128-10; and the w8a8-dynamic presets) and
random static Linear layers (per-channel and per-tensor weights, float bias, fused ReLU).
Inputs: seeded random integers over the whole uint8 grid (float activations of spread
magnitudes for dynamic layers). The adversarial suites (forced ties, saturation, 2**24
accumulators) are the tests in tests/equivalence/. Writes
benchmarks/results/equivalence-<machine>-<date>.json and prints a Markdown table.
Usage: python benchmarks/equivalence.py [--rows 1024]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import warnings
from pathlib import Path

import torch
from torch import nn

import glassquant as gq
from glassquant.analysis.verify import RUNNERS, verify
from glassquant.demo import digits
from glassquant.nn.linear import QuantLinear

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent


def random_static_layers(seed: int = 0) -> dict[str, QuantLinear]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, (k, n, per_channel, relu) in enumerate([(64, 128, True, False), (256, 96, False, True),
                                                   (768, 64, True, True)]):
        w_q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
        w_scale = torch.rand(n if per_channel else 1, generator=g) * 2e-3 + 1e-4
        bias = torch.randn(n, generator=g)
        y_scale = float(w_scale.mean()) * 0.05 * k ** 0.5 * 40
        zw = torch.zeros(n if per_channel else 1, dtype=torch.int32)
        out[f"random{i}"] = QuantLinear(w_q, w_scale, zw, bias, 0.05,
                                        int(torch.randint(0, 256, (1,), generator=g)), y_scale,
                                        int(torch.randint(0, 256, (1,), generator=g)), relu=relu, engine="x86",
                                        name=f"random{i}", check_overflow=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = digits.load_digits_split()
    mlp = digits.digits_mlp(data)
    static = gq.quantize(copy.deepcopy(mlp), "x86", list(data.x_train.split(200)), progress=False)
    layers: dict[str, nn.Module] = {f"digits.{n}": m for n, m in static.named_modules() if isinstance(m, QuantLinear)}
    layers.update(random_static_layers())
    dyn_tensor = gq.quantize(copy.deepcopy(mlp), "w8a8-dynamic-per-tensor", progress=False)
    dyn_token = gq.quantize(copy.deepcopy(mlp), "w8a8-dynamic", progress=False)
    rows = []
    for runtime in RUNNERS:
        checks = verify(layers, runtime, rows=args.rows)
        if runtime in ("x86", "fbgemm", "qnnpack", "onednn", "onnxruntime"):
            checks += verify(dyn_tensor, runtime, rows=64)  # small M and large M: oneDNN's dynamic
            checks += verify(dyn_tensor, runtime, rows=args.rows * 4)  # kernel differs between them
        if runtime == "torchao":
            checks = verify(dyn_token, runtime, rows=args.rows * 8)
        ran = [c for c in checks if c.compared]
        rows.append({"runtime": runtime, "layers": len(ran), "compared": sum(c.compared for c in ran),
                     "mismatches": sum(c.mismatches for c in ran),
                     "kinds": sorted({c.kind for c in ran}),
                     "notes": sorted({c.note for c in ran if c.note})})
    meta = {"date": dt.date.today().isoformat(), "machine": platform.node(), "torch": torch.__version__,
            "rows": args.rows}
    out = ROOT / "benchmarks" / "results" / f"equivalence-{platform.node() or 'machine'}-{meta['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print("| runtime | layers | values compared | mismatches | layer kinds | note |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['runtime']} | {r['layers']} | {r['compared']:,} | {r['mismatches']} | {', '.join(r['kinds'])} | "
              f"{'; '.join(r['notes'])} |")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
