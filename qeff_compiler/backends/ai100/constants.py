"""Provenance of every cost-model constant and of every simulated figure: calibrated, validated or assumed.

- calibrated: fitted to the calibration set only (GPT-J-6B decode on ai100-standard, fp16 8.08 and MXFP6 13.9 tok/s);
- validated: not fitted; published figures the constants were not fitted to land within their bands with it;
- assumed: stated with a derivation, but no published figure we found tests it;
- published: a figure of the device documentation.

The values are read from the modules that use them, so this table cannot drift from the code; `CONSTANTS` must
name every constant of cost_model.py (tests/test_cost_model.py checks it). docs/backend.md shows the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from qeff_compiler.backends.ai100 import cost_model, devices

FIT = "`python -m bench.cost_model_calibration --fit`, on GPT-J-6B decode, ai100-standard (fp16 8.08, MXFP6 13.9 tok/s)"


@dataclass(frozen=True)
class Constant:
    module: object
    name: str
    status: str
    source: str

    @property
    def value(self) -> object:
        return getattr(self.module, self.name)


CONSTANTS: tuple[Constant, ...] = (
    Constant(
        cost_model, "DDR_EFFICIENCY", "calibrated", f"solved with OP_OVERHEAD_S by {FIT}; sets bandwidth-bound decode"
    ),
    Constant(cost_model, "OP_OVERHEAD_S", "calibrated", f"solved with DDR_EFFICIENCY by {FIT}; adds per op per call"),
    Constant(cost_model, "COMPUTE_EFFICIENCY", "validated",
             "assumed 0.6; MLPerf v1.0 BERT-99 int8 throughput (1 card and per card of 16) within ±30 % (-24 %); "
             "the band binds it from below only (fails under ~0.55); sets compute-bound prefill"),
    Constant(cost_model, "VECTOR_FP16_LANES", "validated",
             "assumed: one 1024-bit vector register of fp16 lanes (no AI 100 document gives the vector width); "
             "with the derived clock: 61 G elements/s per Standard core; validated through the MXFP6 points"),
    Constant(cost_model, "MXFP6_DECOMPRESS_VECTOR_OPS_PER_ELEMENT", "validated",
             "assumed instruction count per 64 elements: widen, shift, mask, 2 table lookups, scale broadcast, "
             "multiply, store; OPT-2.7B, OPT-13B and AmberChat-7B MXFP6 decode within ±15 %"),
    Constant(cost_model, "NOCS_PER_SOC", "assumed",
             "3 NoCs at 186 GB/s per SoC [arch]; that the on-chip tier streams over all three is assumed "
             "(no published figure of a model resident in VTCM was found)"),
    Constant(
        cost_model, "P2P_LATENCY_S", "assumed", "5 us per PCIe P2P transfer; no multi-SoC published figure was found"
    ),
    Constant(devices, "FP16_MACS_PER_CYCLE_PER_CORE", "published",
             "[arch]; with the card FP16 peak it gives the core clock: Standard 0.96 GHz, Ultra 0.55 GHz (derived)"),
    Constant(devices, "PCIE_GEN4_BYTES_PER_S_PER_LANE", "published", "16 GT/s with 128b/130b coding (PCIe Gen4)"),
)


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def constants_table() -> str:
    """The Markdown table of every constant: name, value, status, source or derivation."""
    lines = ["| constant | value | status | source or derivation |", "|---|---|---|---|"]
    for c in CONSTANTS:
        lines.append(f"| `{c.name}` | `{_number(c.value)}` | {c.status} | {c.source.replace('|', '/')} |")
    return "\n".join(lines)


def figure_provenance(device: str, tier: str, num_devices: int) -> dict[str, str]:
    """Whether a target's simulated decode and prefill/TTFT figures are calibrated, validated or assumed, and why."""
    single = num_devices == 1 and tier == "ddr"
    if device == "ai100-standard" and single:
        decode = "validated: constants calibrated on GPT-J-6B decode, other published decode points within ±15 %"
    else:
        decode = f"assumed: no published decode figure validates {device}, {tier} tier, {num_devices} SoC(s)"
    if device in ("ai100-standard", "ai100-pro") and single:
        prefill = "validated: compute-bound work within ±30 % of MLPerf BERT throughput"
    else:
        prefill = f"assumed: no published prefill figure validates {device}, {tier} tier, {num_devices} SoC(s)"
    return {"decode": decode, "prefill": prefill}
