"""Refuse checkpoint weights that hold NaN or ±inf, naming the tensor.

One non-finite weight makes every logit NaN; at fp32 nothing downstream notices (argmax of NaN logits is token 0,
forever), so each weight is checked when it is first read from the checkpoint (see `WeightStore.checked`). The
check runs in chunks, so a streamed 7B compile holds no extra copy of its largest tensor.
"""

from __future__ import annotations

import torch

from qeff_compiler.errors import WeightError

#: elements checked at a time (a 4 MiB boolean mask)
_CHUNK = 1 << 22


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise a `WeightError` naming `name`, the first non-finite element and how many there are."""
    if not tensor.is_floating_point():
        return
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start : start + _CHUNK]
        if not bool(torch.isfinite(chunk).all()):
            bad = (~torch.isfinite(flat)).nonzero()
            first = int(bad[0])
            index = list(torch.unravel_index(torch.tensor(first), tensor.shape)) if tensor.dim() else []
            raise WeightError(
                f"weight {name!r} holds {len(bad)} non-finite value(s) (first: {flat[first].item()} at index "
                f"{[int(i) for i in index]}); a NaN or infinite weight makes every logit NaN: fix the checkpoint"
            )
