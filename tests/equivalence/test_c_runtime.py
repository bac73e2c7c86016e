"""The exported C99 runtime, compiled with gcc, against the Python ``glassquant`` dialect: 0 mismatches.

Models: the digits MLP (static glassquant PTQ, x86 per-channel and qnnpack per-tensor, converted
with ``to_integer_only``) on the whole held-out split plus inputs outside the calibrated range;
three "requantize sweep" layers (K = 1, one weight, so each of 256 inputs gives one accumulator
per channel) whose channels put exact .5 ties, int32-limit accumulators, multipliers >= 1
(left shifts), right shifts up to 31, flushed multipliers and saturation inside the input range;
and a K = 4096 layer with full-range inputs. Each program is built twice: ``-O2`` with every
warning an error, and with AddressSanitizer + UBSan (abort on the first report).
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import glassquant as gq
from glassquant import fixedpoint
from glassquant.demo import digits
from glassquant.dialects import integer
from glassquant.export.c import RUNTIME_FILES, compile_command, export_c, header_text, runtime_source
from glassquant.nn.integer import IntegerModel, IntLinear, to_integer_only

pytestmark = pytest.mark.needs_cc

CC = shutil.which("gcc") or shutil.which("cc")
if CC is None:
    pytest.skip("no C compiler: neither gcc nor cc is on PATH", allow_module_level=True)

STRICT = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2")
SANITIZE = (*STRICT, "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all")
BUILDS = {"O2": STRICT, "sanitize": SANITIZE}
RUN_ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1", "UBSAN_OPTIONS": "print_stacktrace=1"}
I32_MAX = 2**31 - 1


def _sanitizers_work(tmp: Path) -> str | None:
    """None if this compiler can build and run a sanitized program, else the reason."""
    src = tmp / "probe.c"
    src.write_text("int main(void) { return 0; }\n")
    r = subprocess.run([CC, *SANITIZE, "-o", str(tmp / "probe"), str(src)], capture_output=True, text=True)
    if r.returncode != 0:
        return f"{CC} cannot build with -fsanitize=address,undefined: {r.stderr.strip()[:300]}"
    if subprocess.run([str(tmp / "probe")], env=RUN_ENV).returncode != 0:
        return "sanitized programs do not run here"
    return None


# ----------------------------------------------------------------------------- models


def sweep_layer(seed: int, n: int, zx: int, w_sign: int, zy: int, qmin: int, qmax: int) -> IntLinear:
    """K = 1, w = w_sign: channel n sees acc = bias_q[n] + w_sign * (x - zx) for the 256 int8 inputs x.

    Channels cycle through adversarial kinds (see the module docstring); the window of useful
    scaled values is ``[qmin - zy, qmax - zy]``.
    """
    g = np.random.default_rng(seed)
    ds = sorted({w_sign * (x - zx) for x in range(-128, 128)})
    d_lo, d_hi = ds[0], ds[-1]
    bound_d = max(abs(d_lo), abs(d_hi))
    b_max = I32_MAX - bound_d
    c_lo, c_hi = qmin - zy, qmax - zy  # scaled values that are not clamped
    bias, mult, rs = [], [], []
    for j in range(n):
        kind = j % 8
        d0 = int(g.integers(d_lo, d_hi + 1))  # the input position of a forced tie
        c = int(g.integers(c_lo, c_hi + 1))  # a target scaled value inside the window
        if kind == 0:  # M = 2**-(r+1): every other acc (r = 0) up to one in 32 (r = 4) is an exact tie
            r = int(g.integers(0, 5))
            m, b = 2**30, c * 2 ** (r + 1) + 2**r - d0
        elif kind == 1:  # m = o * 2**24 (o odd): ties at acc = 2**(6+r) mod 2**(7+r), value o * (q + 1/2)
            r, o = int(g.integers(0, 7)), int(g.integers(32, 64)) * 2 + 1
            q = c // o
            m, b = o * 2**24, q * 2 ** (7 + r) + 2 ** (6 + r) - d0
        elif kind == 2:  # anything: random multiplier, shift and bias
            r, m, b = int(g.integers(0, 32)), int(g.integers(2**30, 2**31)), int(g.integers(-b_max, b_max + 1))
        elif kind == 3:  # accumulators at the int32 limits, scaled into the window
            r, m = int(g.integers(23, 32)), int(g.choice([2**30, 2**31 - 1, int(g.integers(2**30, 2**31))]))
            b = b_max if j % 16 == 3 else -b_max
        elif kind == 4:  # real multipliers >= 1: left shifts (right_shift < 0); acc crosses 0 at d0
            r, m, b = -int(g.integers(1, 15)), int(g.integers(2**30, 2**31)), -d0
        elif kind == 5:  # a flushed multiplier: every output is the zero point
            r, m, b = 0, 0, int(g.integers(-b_max, b_max + 1))
        elif kind == 6:  # the largest right shift: outputs in {-1, 0, 1} + zy, ties impossible
            r, m, b = 31, int(g.integers(2**30, 2**31)), int(g.choice([b_max, -b_max, 2**30, -(2**30)]))
        else:  # M just below 1
            r, m, b = 0, 2**31 - 1, int(c - (d_lo + d_hi) // 2)
        bias.append(b)
        mult.append(m)
        rs.append(r)
    w_q = torch.full((n, 1), w_sign, dtype=torch.int8)
    return IntLinear(w_q, torch.tensor(bias, dtype=torch.int32), torch.tensor(mult, dtype=torch.int32),
                     torch.tensor(rs, dtype=torch.int32), 1.0, zx, 1.0, zy, qmin, qmax, name=f"sweep{seed}")


def big_k_layer(seed: int = 7, k: int = 4096, n: int = 48) -> tuple[IntLinear, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w_q = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    zx = 37
    wc = integer.accumulator_bound(w_q, torch.zeros(n, dtype=torch.int32), zx)
    at_limit = [(I32_MAX - int(wc[j])) * (-1) ** (j // 4) for j in range(n)]  # |acc| can reach 2**31 - 1
    bias = [int(torch.randint(-1000, 1000, (1,), generator=g)) * 1000 if j % 4 else at_limit[j] for j in range(n)]
    mult = torch.randint(2**30, 2**31 - 1, (n,), generator=g, dtype=torch.int64).to(torch.int32)
    mult[::5] = 2**30
    rs = torch.randint(12, 17, (n,), generator=g, dtype=torch.int32)
    rs[::4] = 24  # the int32-limit channels
    layer = IntLinear(w_q, torch.tensor(bias, dtype=torch.int32), mult, rs, 1.0, zx, 1.0, -3, -128, 127, name="bigk")
    x = torch.randint(-128, 128, (64, k), generator=g, dtype=torch.int8)
    x[0], x[1] = 127, -128
    x[2] = torch.where(w_q[0] >= 0, 127, -128).to(torch.int8)  # drives channel 0 to its extreme
    return layer, x


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[IntegerModel, torch.Tensor]]:
    data = digits.load_digits_split()
    mlp = digits.digits_mlp(data)
    calibration = list(data.x_train.split(200))
    outside = torch.rand(300, 64, generator=torch.Generator().manual_seed(0)) * 3 - 1  # saturates the input grid
    out: dict[str, tuple[IntegerModel, torch.Tensor]] = {}
    for preset in ("x86", "qnnpack"):
        chain = IntegerModel.from_module(to_integer_only(gq.quantize(copy.deepcopy(mlp), preset, calibration)))
        out[f"digits_{preset}"] = chain, chain.quantize_input(torch.cat([data.x_test, outside]))
    all_int8 = torch.arange(-128, 128, dtype=torch.int8).reshape(256, 1)
    for name, layer in [("sweep_a", sweep_layer(1, 512, -128, 1, -128, -128, 127)),
                        ("sweep_b", sweep_layer(2, 256, 127, -1, 127, -20, 127)),
                        ("sweep_relu", sweep_layer(3, 256, 3, 1, -5, -5, 60))]:
        out[name] = IntegerModel.from_module(layer), all_int8
    layer, x = big_k_layer()
    out["big_k"] = IntegerModel.from_module(layer), x
    return out


@pytest.fixture(scope="module")
def programs(cases: dict[str, tuple[IntegerModel, torch.Tensor]],
             tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path | str]:
    """Every case exported and compiled in both builds (in parallel): path, or the reason it is unavailable."""
    root = tmp_path_factory.mktemp("c_runtime")
    no_sanitizer = _sanitizers_work(root)
    jobs: dict[tuple[str, str], list[str]] = {}
    for name, (chain, _) in cases.items():
        export_c(chain, root / name, name=name)
        for build, flags in BUILDS.items():
            if build == "sanitize" and no_sanitizer:
                continue
            jobs[name, build] = compile_command(root / name, root / name / f"main_{build}", CC, flags)
    bad = root / "bad"  # a header whose first multiplier is out of range: gq_model_check must refuse it
    export_c(cases["digits_x86"][0], bad, name="bad")
    text = (bad / "bad.h").read_text()
    (bad / "bad.h").write_text(re.sub(r"(bad_l0_multiplier\[\d+\] = \{\n    )\d+", r"\g<1>12345", text, count=1))
    jobs["bad", "O2"] = compile_command(bad, bad / "main_O2", CC, STRICT)

    def build(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(zip(jobs, pool.map(build, jobs.values()), strict=True))
    built: dict[tuple[str, str], Path | str] = {}
    for key, r in results.items():
        assert r.returncode == 0, f"{key}: {' '.join(jobs[key])}\n{r.stderr}"
        built[key] = Path(jobs[key][jobs[key].index("-o") + 1])
    for name in cases:
        built.setdefault((name, "sanitize"), no_sanitizer or "not built")
    return built


def _run_c(program: Path | str, x_q: torch.Tensor, *args: str) -> subprocess.CompletedProcess[bytes]:
    if isinstance(program, str):
        pytest.skip(f"sanitizer build unavailable: {program}")
    return subprocess.run([str(program), *args], input=x_q.contiguous().numpy().tobytes(), capture_output=True,
                          env=RUN_ENV, timeout=120)


def _c_outputs(program: Path | str, x_q: torch.Tensor, width: int) -> torch.Tensor:
    r = _run_c(program, x_q)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert not r.stderr, r.stderr.decode()[-2000:]
    return torch.from_numpy(np.frombuffer(r.stdout, dtype=np.int8).copy()).reshape(len(x_q), width)


# ----------------------------------------------------------------------------- tests


def test_runtime_sources_are_integer_only_c99(cases: dict[str, tuple[IntegerModel, torch.Tensor]]) -> None:
    texts = {f: runtime_source(f) for f in RUNTIME_FILES}
    texts["digits.h"] = header_text(cases["digits_x86"][0], "digits")
    for f, text in texts.items():
        code = re.sub(r"/\*.*?\*/|//[^\n]*", " ", text, flags=re.S)  # comments out
        for banned in (r"\bfloat\b", r"\bdouble\b", r"<math\.h>"):
            assert not re.search(banned, text), (f, banned)  # not even in comments
        for banned in (r"\bmalloc\b", r"\bcalloc\b", r"\brealloc\b", r"\bfree\b", r"<stdlib\.h>"):
            assert not re.search(banned, code), (f, banned)
        if f != "gq_requantize.c":
            assert "int64" not in code, f  # int64 only for the multiply in gq_requantize.c
    assert len(re.findall(r"int64_t", texts["gq_requantize.c"])) >= 3


@pytest.mark.parametrize("build", list(BUILDS))
@pytest.mark.parametrize("name", ["digits_x86", "digits_qnnpack", "sweep_a", "sweep_b", "sweep_relu", "big_k"])
def test_c_equals_python_dialect(name: str, build: str, cases: dict[str, tuple[IntegerModel, torch.Tensor]],
                                 programs: dict[tuple[str, str], Path | str]) -> None:
    chain, x_q = cases[name]
    want = torch.cat(chain.run(x_q), dim=1)  # (M, total outputs): every layer's int8 outputs
    got = _c_outputs(programs[name, build], x_q, want.shape[1])
    mismatches = int((got != want).sum())
    assert mismatches == 0, f"{name} [{build}]: {mismatches} of {want.numel()} outputs differ"
    assert torch.equal(got, want)
    if name.startswith("sweep"):
        assert want.numel() >= 65_536
        lo, hi = chain.clamps[0]
        assert len(set(want.reshape(-1).tolist())) > 0.9 * (hi - lo + 1)  # the whole window is used, not its ends


def test_compared_outputs_and_adversarial_content(cases: dict[str, tuple[IntegerModel, torch.Tensor]]) -> None:
    """What the equivalence test above covers: >= 400,000 integers per build, >= 3,500 exact ties inside
    the clamp range, >= 30,000 outputs with a left shift, and mutant roundings (half away from zero,
    gemmlowp's double rounding) that would miss about a thousand of them or more."""
    total = sum(len(x) * sum(m.out_features for m in chain.layers) for chain, x in cases.values())
    assert total >= 400_000
    assert len(cases["digits_x86"][1]) == 449 + 300  # the whole held-out split, plus out-of-range inputs
    ties = half_away_misses = double_misses = left_shift_outputs = 0
    for name in ("sweep_a", "sweep_b", "sweep_relu", "big_k"):
        chain, x_q = cases[name]
        layer = chain.layers[0]
        acc = integer.accumulate(x_q, layer.x_zero_point, layer.w_q, layer.bias_q)  # (M, N)
        m, rs = layer.multiplier.to(torch.int64), layer.right_shift.to(torch.int64)
        t = 31 + rs
        p = acc * m  # exact: |p| < 2**62
        want = chain(x_q).to(torch.int64)
        zy, lo, hi = layer.y_zero_point, layer.qmin, layer.qmax
        tie = (p & ((1 << t) - 1)) == (1 << (t - 1))  # acc * M is exactly k + 1/2
        ties += int((tie & (want > lo) & (want < hi)).sum())  # ties that no clamp hides
        away = (torch.sign(p) * ((p.abs() + (1 << (t - 1))) >> t) + zy).clamp(lo, hi)
        half_away_misses += int((away != want).sum())
        ok = rs >= 0  # gemmlowp's form needs acc * 2**left in int32; compare where that holds
        double = (fixedpoint.requantize_double_rounding(acc[:, ok], m[ok], -rs[ok]) + zy).clamp(lo, hi)
        double_misses += int((double != want[:, ok]).sum())
        left_shift_outputs += int((rs < 0).sum()) * len(x_q)
    assert ties >= 3_500 and left_shift_outputs >= 30_000, (ties, left_shift_outputs)  # measured 4,048 and 32,768
    assert half_away_misses >= 800 and double_misses >= 3_000, (half_away_misses, double_misses)  # 1,000 and 4,201


def test_c_digits_accuracy_within_half_a_point_of_float(cases: dict[str, tuple[IntegerModel, torch.Tensor]],
                                                         programs: dict[tuple[str, str], Path | str]) -> None:
    data = digits.load_digits_split()
    x_q = cases["digits_x86"][1]
    r = _run_c(programs["digits_x86", "O2"], x_q[:449], "-l")  # final layer only
    assert r.returncode == 0
    logits = torch.from_numpy(np.frombuffer(r.stdout, dtype=np.int8).copy()).reshape(449, 10)
    with torch.no_grad():
        acc_f = digits.accuracy(digits.digits_mlp(data)(data.x_test), data.y_test)
    assert abs(digits.accuracy(logits.float(), data.y_test) - acc_f) <= 0.005


def test_example_main_text_mode_and_errors(cases: dict[str, tuple[IntegerModel, torch.Tensor]],
                                           programs: dict[tuple[str, str], Path | str]) -> None:
    chain, x_q = cases["digits_x86"]
    program = programs["digits_x86", "O2"]
    r = _run_c(program, x_q[:3], "-t")
    lines = r.stdout.decode().splitlines()
    assert r.returncode == 0 and len(lines) == 6 and lines[1].startswith("0 1:")
    outs = chain.run(x_q[:3])
    assert [int(v) for v in lines[5].split(":")[1].split()] == outs[1][2].tolist()
    r = _run_c(program, x_q[:2].reshape(-1)[:100])  # 1.56 samples: a truncated one
    assert r.returncode == 3 and b"read 36 of 64 bytes" in r.stderr
    assert _run_c(program, x_q[:1], "-x").returncode == 1  # unknown option: usage
    r = _run_c(programs["bad", "O2"], x_q[:1])
    assert r.returncode == 2 and b"out of range" in r.stderr and not r.stdout


def test_export_checks_its_input(tmp_path: Path, cases: dict[str, tuple[IntegerModel, torch.Tensor]]) -> None:
    chain = cases["digits_x86"][0]
    for bad in ("gq_runtime", "9lives", "a-b", "", "example_main"):
        with pytest.raises(ValueError, match="C identifier"):
            export_c(chain, tmp_path, name=bad)
    data = digits.load_digits_split()
    static = gq.quantize(digits.digits_mlp(data), "x86", [data.x_train[:200]])
    with pytest.raises(ValueError, match="to_integer_only"):
        export_c(static, tmp_path)
    written = export_c(chain, tmp_path / "out", name="mlp")
    assert sorted(p.name for p in written) == sorted(["mlp.h", "gq_model.h", *RUNTIME_FILES])
    header = (tmp_path / "out" / "mlp.h").read_text()
    layer = chain.layers[0]
    assert f"static const int8_t mlp_l0_w_q[{64 * 128}]" in header
    assert f"values in [{int(layer.bias_q.min())}, {int(layer.bias_q.max())}]" in header
    assert f"|acc| <= {layer.accumulator_bound} <= 2^31 - 1" in header
    assert "#define MLP_TOTAL_OUTPUTS 138" in header and "#define MLP_L1_OUTPUT_OFFSET 128" in header
