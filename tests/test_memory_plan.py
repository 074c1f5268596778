"""The AI 100 memory plan: bytes per SoC at full scale (config only), the KV cache at its storage width, the
memory tier, and the refusal of models that do not fit, with the numbers and the alternatives."""

from __future__ import annotations

import re

import pytest
from transformers import MptConfig

import qeff_compiler as qc
from qeff_compiler.backends.ai100.devices import get_device
from qeff_compiler.backends.ai100.memory import check_fits, plan_memory
from qeff_compiler.backends.ai100.partition import partition_program
from qeff_compiler.capture.presets import preset_config
from qeff_compiler.errors import InvalidArgumentError, ModelDoesNotFitError
from qeff_compiler.ir.program import Program
from qeff_compiler.passes import PassManager
from tests.conftest import random_model, tiny_config

STANDARD = get_device("ai100-standard")
OPT_13B = MptConfig(d_model=5120, n_heads=40, n_layers=40, vocab_size=50272, max_seq_len=2048)


def _lower(captured: Program, precision: str = "fp16", ctx_len: int = 2048, kv: str = "") -> Program:
    lowering = {"fp16": "lower-fp16,", "mxfp6": "lower-fp16,lower-mxfp6,"}[precision]
    pipeline = f"strip-export-noise,patch-attention,{lowering}kv-cache{{ctx_len={ctx_len}{kv}}},dce"
    return PassManager(pipeline, verify=False).run(captured)


def test_mpt_7b_fp16_on_standard_from_the_config_alone() -> None:
    decode = _lower(qc.capture(preset_config("mpt-7b"), seq_len=1))  # also as the prefill: captures cost seconds
    assert not decode.has_weight_data
    memory = plan_memory(decode, decode, partition_program(decode, 14), STANDARD, 1)
    (soc,) = memory.socs
    assert soc.weight_bytes == pytest.approx(13.3e9, rel=0.005)  # 6.65 B parameters at 2 B
    assert soc.kv_cache_bytes == 32 * 2 * 2048 * 4096 * 2  # layers x K/V x ctx x d_model x fp16
    assert 0 < soc.activation_bytes < 1e7 and 0 < soc.peak_core_bytes < soc.weight_bytes
    assert memory.fits and memory.tier == "ddr" and memory.precision == "fp16"
    check_fits(memory)
    two = plan_memory(decode, decode, partition_program(decode, 14, num_devices=2), STANDARD, 1)
    assert [s.weight_bytes for s in two.socs] == [pytest.approx(6.65e9, rel=0.005)] * 2
    assert [s.kv_cache_bytes for s in two.socs] == [soc.kv_cache_bytes // 2] * 2


def test_an_mxint8_cache_counts_its_storage_width_and_batch_scales_it() -> None:
    config = tiny_config(d_model=128, n_heads=2)  # head_dim 64: two MXINT8 blocks
    prefill = _lower(qc.capture(config, seq_len=8), ctx_len=32)
    fp16, mxint8 = (_lower(qc.capture(config, seq_len=1), ctx_len=32, kv=kv) for kv in ("", ",dtype=mxint8"))
    sizes = [plan_memory(prefill, p, partition_program(p, 4), STANDARD).socs[0].kv_cache_bytes for p in (fp16, mxint8)]
    activations = [
        plan_memory(p, fp16, partition_program(fp16, 4), STANDARD).socs[0].activation_bytes for p in (prefill, fp16)
    ]
    assert activations[0] > activations[1]  # the prefill's rows set the working set
    assert sizes[1] / sizes[0] == pytest.approx(8.25 / 16)
    batch_four = plan_memory(mxint8, mxint8, partition_program(mxint8, 4), STANDARD, batch_size=4)
    assert batch_four.socs[0].kv_cache_bytes == 4 * sizes[1] and batch_four.batch_size == 4
    with pytest.raises(InvalidArgumentError, match="the plan uses 16 cores per SoC; ai100-standard has 14"):
        plan_memory(fp16, fp16, partition_program(fp16, 16), STANDARD)


def test_a_small_model_lives_in_vtcm() -> None:
    program = _lower(qc.capture(random_model(tiny_config()), seq_len=1), ctx_len=16)
    memory = plan_memory(program, program, partition_program(program, 14, num_devices=2), "ai100-pro")
    assert memory.tier == "vtcm" and memory.fits and len(memory.socs) == 2
    assert all(s.peak_core_bytes <= STANDARD.vtcm_bytes_per_core for s in memory.socs)
    assert memory.to_dict()["tier"] == "vtcm"


def test_mpt_30b_fp16_on_one_standard_is_refused_with_the_numbers() -> None:
    decode = _lower(qc.capture(preset_config("mpt-30b"), seq_len=1))
    memory = plan_memory(decode, decode, partition_program(decode, 14), STANDARD)
    with pytest.raises(ModelDoesNotFitError) as refused:
        check_fits(memory)
    message = str(refused.value)
    assert "does not fit on ai100-standard (1 SoC x 14 cores, fp16, batch 1)" in message
    assert re.search(
        r"SoC 0 needs 62\.7\d GB \(weights 59\.91 GB \+ KV cache 2\.82 GB \+ activations 0\.0\d GB\) but has 17\.18 GB of DDR",
        message,
    )
    assert "Estimated from parameter counts" in message and "num_devices=4 would fit at fp16" in message
    assert re.search(
        r"no precision fits on 1 SoC\(s\) \(mxfp6 needs ~26\.9\d GB per SoC\); mxfp6 fits from num_devices=2", message
    )


def test_opt_13b_sized_model_fits_one_standard_in_mxfp6_but_not_fp16() -> None:
    captured = qc.capture(OPT_13B, seq_len=1)
    fp16, mxfp6 = (_lower(captured, precision) for precision in ("fp16", "mxfp6"))
    refused = plan_memory(fp16, fp16, partition_program(fp16, 14), STANDARD)
    with pytest.raises(
        ModelDoesNotFitError,
        match=r"on 1 SoC\(s\) precision int8 \(~\S+ GB per SoC\), mxfp6 \(~\S+ GB per SoC\) would fit",
    ):
        check_fits(refused)
    fitting = plan_memory(mxfp6, mxfp6, partition_program(mxfp6, 14), STANDARD)
    check_fits(fitting)
    assert fitting.precision == "mxfp6" and fitting.socs[0].total_bytes < STANDARD.ddr_bytes_per_soc
