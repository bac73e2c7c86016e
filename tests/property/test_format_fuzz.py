"""Fuzzing ``export.format.load``: a corrupted file raises FormatError or loads the very same model.

A small valid file (a static-quantized MLP plus a float LayerNorm, its header re-padded
with 5 trailing spaces) is edited at random: bytes flipped anywhere, inside the header or the data,
header bytes set to whitespace, truncated, bytes inserted or deleted, the header length
overwritten. ``load`` must either raise ``FormatError`` (any other exception
fails the test) or, when the edit only touched ignorable bytes (header padding), return a
model whose outputs, integers and tensors equal the original's (``torch.equal``). Besides
hypothesis, every single byte of the file is flipped once, and each padding byte is set to
each JSON whitespace character (those edits must load).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import glassquant
from glassquant.export.format import FormatError, load, save


class Case:
    """The original model, its file bytes, the header length, and a scratch path."""

    def __init__(self, directory: Path) -> None:
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.LayerNorm(3)).eval()
        with torch.no_grad():
            self.model[3].weight.uniform_(0.5, 2.0, generator=g)
        glassquant.quantize(self.model, "x86", [torch.randn(64, 6, generator=g)])
        self.x = torch.randn(16, 6, generator=g)
        good = directory / "good.safetensors"
        save(self.model, good)
        self.blob = repad(good.read_bytes(), 5)
        (self.n,) = struct.unpack("<Q", self.blob[:8])
        self.scratch = directory / "edited.safetensors"
        self.y = self.model(self.x)
        self.ints = glassquant.integer_outputs(self.model, self.x)
        self.state = self.model.state_dict()

    def check(self, blob: bytes) -> bool:
        """Load edited bytes: True if it loaded (and equals the original), False on FormatError."""
        self.scratch.write_bytes(blob)
        try:
            out = load(self.scratch)
        except FormatError:
            return False
        assert torch.equal(out(self.x), self.y)
        ints = glassquant.integer_outputs(out, self.x)
        assert ints.keys() == self.ints.keys() and all(torch.equal(ints[k], self.ints[k]) for k in ints)
        state = out.state_dict()
        assert state.keys() == self.state.keys()
        assert all(state[k].dtype == self.state[k].dtype and torch.equal(state[k], self.state[k]) for k in state)
        return True


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Case:
    return Case(tmp_path_factory.mktemp("fuzz"))


def repad(blob: bytes, spaces: int, lead: bytes = b"") -> bytes:
    """The same file with its header JSON followed by ``spaces`` spaces (and ``lead`` after its '{')."""
    (n,) = struct.unpack("<Q", blob[:8])
    body = blob[8:8 + n].rstrip(b" ")
    header = body[:1] + lead + body[1:] + b" " * spaces
    return struct.pack("<Q", len(header)) + header + blob[8 + n:]


def _flip(blob: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(blob)
    for pos, mask in edits:
        b[pos % len(b)] ^= mask
    return bytes(b)


@st.composite
def edited(draw: st.DrawFn, blob: bytes, n: int) -> tuple[str, bytes]:
    """One random corruption of ``blob`` (header length ``n``), named for hypothesis' statistics."""
    size = len(blob)
    kind = draw(st.sampled_from(["flip", "flip header", "flip data", "whitespace", "truncate", "insert", "delete",
                                 "length", "mixed"]))
    if kind == "flip":
        out = _flip(blob, draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1,
                                        max_size=4)))
    elif kind == "flip header":
        out = _flip(blob, draw(st.lists(st.tuples(st.integers(0, n + 7), st.integers(1, 255)), min_size=1,
                                        max_size=3)))
    elif kind == "flip data":
        out = _flip(blob, draw(st.lists(st.tuples(st.integers(n + 8, size - 1), st.integers(1, 255)), min_size=1,
                                        max_size=2)))
    elif kind == "whitespace":
        at = draw(st.integers(8, n + 7))
        out = blob[:at] + draw(st.sampled_from([b" ", b"\t", b"\n", b"\r"])) + blob[at + 1:]
    elif kind == "truncate":
        out = blob[:draw(st.integers(0, size - 1))]
    elif kind == "insert":
        at = draw(st.integers(0, size))
        out = blob[:at] + draw(st.binary(min_size=1, max_size=16)) + blob[at:]
    elif kind == "delete":
        at = draw(st.integers(0, size - 1))
        out = blob[:at] + blob[at + draw(st.integers(1, 64)):]
    elif kind == "length":
        new_n = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(max(n - 24, 0), n + 24)))
        out = struct.pack("<Q", new_n) + blob[8:]
    else:
        out = _flip(blob, draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), max_size=2)))
        out = out[:draw(st.integers(0, len(out)))] + draw(st.binary(max_size=8))
    return kind, out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_edits_raise_format_error_or_load_the_same_model(case: Case, data: st.DataObject) -> None:
    kind, blob = data.draw(edited(case.blob, case.n))
    loaded = case.check(blob)
    event("unchanged (edits cancelled)" if blob == case.blob else f"{kind}: {'loaded' if loaded else 'FormatError'}")
    if blob == case.blob:
        assert loaded


def test_every_single_byte_flip(case: Case) -> None:
    # 0x41 turns a space into 'a' and every other byte into another non-whitespace byte or a
    # control character: no single flip may load
    loaded = [i for i in range(len(case.blob)) if case.check(_flip(case.blob, [(i, 0x41)]))]
    assert loaded == []


def test_whitespace_is_ignorable(case: Case) -> None:
    assert case.check(case.blob)
    assert case.check(repad(case.blob, 0)) and case.check(repad(case.blob, 13, lead=b" \n\t\r"))
    for i in range(case.n + 8 - 5, case.n + 8):  # each padding byte, as each JSON whitespace
        for ws in b"\t\n\r":
            b = bytearray(case.blob)
            b[i] = ws
            assert case.check(bytes(b))
    b = bytearray(case.blob)  # a non-whitespace byte there is an error
    b[case.n + 7] = ord("x")
    assert not case.check(bytes(b))
