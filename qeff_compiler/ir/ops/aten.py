"""Traits of the ATen ops (from torch.export) the compiler reasons about; every other ATen op is plain compute."""

from __future__ import annotations

import operator

import torch

from qeff_compiler.ir.ops.traits import OpTraits, register_traits

aten = torch.ops.aten

#: ops whose output elements are elements of their input: views, reshapes, selections, copies
DATA_MOVING = (
    operator.getitem,
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.transpose.int,
    aten.t.default,
    aten.permute.default,
    aten.expand.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.slice.Tensor,
    aten.select.int,
    aten.contiguous.default,
    aten.clone.default,
    aten.alias.default,
)

for _target in DATA_MOVING:
    register_traits(_target, OpTraits(data_moving=True))
for _target in (aten.gather.default, aten.index_select.default):
    register_traits(_target, OpTraits(lookup=True))
register_traits(aten.embedding.default, OpTraits(lookup=True, weight_operands=(0,)))
register_traits(aten._to_copy.default, OpTraits(cast=True, elementwise=True, parts={0: "matrix"}))
register_traits(aten.gelu.default, OpTraits(elementwise=True))
register_traits(aten.linear.default, OpTraits(linear=True, weight_operands=(1,)))
