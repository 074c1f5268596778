"""Cloud AI 100 device specifications, as data, with the source of every figure.

Sources:
- [arch] Qualcomm Cloud AI 100 SDK documentation, "Architecture" page (cloud-ai-sdk docs): SoCs per card, AI cores
  per SoC, 8 MB VTCM + 1 MB L2 per core, LPDDR4x size and bandwidth per SoC, three NoCs at 186 GB/s, 8192 INT8 /
  4096 FP16 MACs per clock per core, cards and SoCs talk over PCIe P2P, host link and TDP per card.
- [card] the product pages / SDK card table: peak FP16 / INT8 per card (Standard 110 TFLOPS / 325 TOPS, Pro 125 /
  375, Ultra 290 / 870).

Peak rates per core are the card's published peak divided by its cores: the per-core MAC
counts and the card peaks are not mutually consistent (4096 FP16 MACs x 2 x 14 cores would need a 0.96 GHz clock
for 110 TFLOPS, 8192 INT8 MACs a 1.42 GHz clock for 325 TOPS) and no clock is published, so the card peaks are the
authority. PCIe P2P bandwidth is the link's: PCIe Gen4 moves 1.97 GB/s per lane per direction (16 GT/s, 128b/130b
coding), x8 → 15.75 GB/s, x16 → 31.5 GB/s; the Ultra's four SoCs share its on-card switch (modelled as each SoC
having an x16 Gen4 path to the switch: an assumption, the SDK page does not give the switch's per-port width).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from qeff_compiler.errors import InvalidArgumentError

GB = 1e9
GIB = 1 << 30
MIB = 1 << 20
TERA = 1e12
#: PCIe Gen4 usable bandwidth per lane and direction: 16 GT/s with 128b/130b coding
PCIE_GEN4_BYTES_PER_S_PER_LANE = 16e9 * 128 / 130 / 8
#: FP16 multiply-accumulates per clock of one core's tensor unit [arch]; with the card's FP16 peak it gives the clock
FP16_MACS_PER_CYCLE_PER_CORE = 4096


@dataclass(frozen=True)
class DeviceSpec:
    """One AI 100 card type. Sizes in bytes, rates in bytes/s or operations/s."""

    name: str
    #: SoCs on one card [arch]
    socs_per_card: int
    #: AI cores (NSPs) per SoC [arch]
    cores_per_soc: int
    #: vector tightly-coupled memory per core [arch]
    vtcm_bytes_per_core: int
    #: L2 cache per core [arch]
    l2_bytes_per_core: int
    #: LPDDR4x per SoC [arch]
    ddr_bytes_per_soc: int
    #: LPDDR4x bandwidth per SoC [arch]
    ddr_bytes_per_s_per_soc: float
    #: card peak FP16 FLOP/s [card], shared by all cores of all SoCs
    peak_fp16_flops_per_card: float
    #: card peak INT8 OP/s [card]
    peak_int8_ops_per_card: float
    #: bandwidth of one of the SoC's three NoCs [arch]
    noc_bytes_per_s: float
    #: PCIe P2P bandwidth per SoC and direction (see module docstring)
    pcie_p2p_bytes_per_s: float

    @property
    def cores_per_card(self) -> int:
        return self.socs_per_card * self.cores_per_soc

    @property
    def peak_fp16_flops_per_core(self) -> float:
        return self.peak_fp16_flops_per_card / self.cores_per_card

    @property
    def peak_int8_ops_per_core(self) -> float:
        return self.peak_int8_ops_per_card / self.cores_per_card

    @property
    def core_clock_hz(self) -> float:
        """The clock the FP16 peak implies: peak per core / (2 x FP16 MACs per cycle). Derived, not published:
        Standard 0.96 GHz, Pro 0.95 GHz, Ultra 0.55 GHz (its SoCs run at a lower clock inside the 150 W card)."""
        return self.peak_fp16_flops_per_core / (2 * FP16_MACS_PER_CYCLE_PER_CORE)

    @property
    def vtcm_bytes_per_soc(self) -> int:
        return self.vtcm_bytes_per_core * self.cores_per_soc

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


DEVICES: dict[str, DeviceSpec] = {
    "ai100-standard": DeviceSpec(
        name="ai100-standard",
        socs_per_card=1,
        cores_per_soc=14,
        vtcm_bytes_per_core=8 * MIB,
        l2_bytes_per_core=1 * MIB,
        ddr_bytes_per_soc=16 * GIB,
        ddr_bytes_per_s_per_soc=137 * GB,
        peak_fp16_flops_per_card=110 * TERA,
        peak_int8_ops_per_card=325 * TERA,
        noc_bytes_per_s=186 * GB,
        pcie_p2p_bytes_per_s=8 * PCIE_GEN4_BYTES_PER_S_PER_LANE,  # Gen4 x8 host link [arch]
    ),
    "ai100-pro": DeviceSpec(
        name="ai100-pro",
        socs_per_card=1,
        cores_per_soc=16,
        vtcm_bytes_per_core=8 * MIB,
        l2_bytes_per_core=1 * MIB,
        ddr_bytes_per_soc=32 * GIB,
        ddr_bytes_per_s_per_soc=137 * GB,
        peak_fp16_flops_per_card=125 * TERA,
        peak_int8_ops_per_card=375 * TERA,
        noc_bytes_per_s=186 * GB,
        pcie_p2p_bytes_per_s=8 * PCIE_GEN4_BYTES_PER_S_PER_LANE,  # Gen4 x8 host link [arch]
    ),
    "ai100-ultra": DeviceSpec(
        name="ai100-ultra",
        socs_per_card=4,
        cores_per_soc=16,
        vtcm_bytes_per_core=8 * MIB,
        l2_bytes_per_core=1 * MIB,
        ddr_bytes_per_soc=32 * GIB,
        ddr_bytes_per_s_per_soc=137 * GB,
        peak_fp16_flops_per_card=290 * TERA,
        peak_int8_ops_per_card=870 * TERA,
        noc_bytes_per_s=186 * GB,
        pcie_p2p_bytes_per_s=16 * PCIE_GEN4_BYTES_PER_S_PER_LANE,  # Gen4 x16 via the on-card switch (assumed)
    ),
}


#: the most SoCs a model is partitioned over (tensor parallel): 16 Ultra cards of 4 SoCs, one server's worth
#: (assumption); also how far a refused model's memory plan searches for a SoC count that fits
MAX_DEVICES = 64

def get_device(name: str) -> DeviceSpec:
    """The spec of a device name; an unknown name is an `InvalidArgumentError` listing the known ones."""
    try:
        return DEVICES[name]
    except KeyError:
        raise InvalidArgumentError(f"unknown device {name!r}; known devices: {', '.join(DEVICES)}") from None
