"""Pipeline strings: parsing, typed options, and a specific error for each kind of mistake."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qeff_compiler.errors import PassOptionError, PipelineError, PipelineSyntaxError, UnknownPassError
from qeff_compiler.ir.program import Program
from qeff_compiler.passes import Pass, build_passes, option, parse_pipeline, register_pass


@dataclasses.dataclass(frozen=True)
class _ToyOptions:
    ctx_len: int = option(128, "an int option")
    scale: float = option(1.0, "a float option")
    enabled: bool = option(True, "a bool option")
    dtype: str | None = option(None, "an optional string option")


@register_pass
class _ToyPass(Pass):
    name = "test-toy"
    summary = "test-only pass with one option of each type"
    Options: ClassVar[type] = _ToyOptions

    def transform(self, program: Program) -> Program:
        return program


def test_parse_names_and_options() -> None:
    parsed = parse_pipeline("dce, test-toy{ctx_len=256 scale=0.5,enabled=false},strip-export-noise")
    assert [p.name for p in parsed] == ["dce", "test-toy", "strip-export-noise"]
    assert parsed[1].options == {"ctx_len": "256", "scale": "0.5", "enabled": "false"}
    assert parse_pipeline("") == []


def test_options_are_converted_by_field_type() -> None:
    (toy,) = build_passes("test-toy{ctx_len=256,scale=0.5,enabled=false,dtype=mxint8}")
    assert toy.options == _ToyOptions(ctx_len=256, scale=0.5, enabled=False, dtype="mxint8")
    assert toy.describe() == "test-toy{ctx_len=256,scale=0.5,enabled=False,dtype=mxint8}"
    (default,) = build_passes("test-toy{dtype=none}")
    assert default.options == _ToyOptions()


def test_unknown_pass_names_it_and_suggests_close_matches() -> None:
    with pytest.raises(UnknownPassError, match=r"unknown pass 'dec'.*did you mean dce"):
        build_passes("strip-export-noise,dec")


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("test-toy{depth=3}", r"no option 'depth' \(its options: ctx_len, scale, enabled, dtype\)"),
        ("test-toy{ctx_len=big}", r"ctx_len='big' of pass test-toy must be int"),
        ("test-toy{enabled=maybe}", r"enabled='maybe' .* must be bool"),
        ("test-toy{ctx_len=1,ctx_len=2}", "given twice"),
        ("dce{x=1}", r"no option 'x' \(its options: none\)"),
    ],
)
def test_bad_options_get_specific_errors(pipeline: str, message: str) -> None:
    with pytest.raises(PassOptionError, match=message):
        build_passes(pipeline)


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("test-toy{ctx_len=1", "'{' is never closed"),
        ("test-toy{a{b=1}}", "nested '{'"),
        ("dce}", "expected ',' between passes"),
        ("dce,", "ends with ','"),
        (",dce", "expected a pass name"),
        ("dce,,dce", "expected a pass name"),
        ("{ctx_len=1}", "expected a pass name"),
        ("test-toy{ctx_len}", "is not key=value"),
        ("test-toy{=3}", "is not key=value"),
        ("Dce", "expected a pass name"),
    ],
)
def test_malformed_pipelines_say_where(pipeline: str, message: str) -> None:
    with pytest.raises(PipelineSyntaxError, match=message) as error:
        parse_pipeline(pipeline)
    assert f"malformed pipeline {pipeline!r} at column" in str(error.value)


@given(st.text(alphabet="abcdz-{}=,1 _", max_size=30))
def test_random_pipeline_text_parses_or_raises_a_pipeline_error(text: str) -> None:
    try:
        build_passes(text)
    except PipelineError:
        pass
