"""The weight store: weights referenced by name, materialised only when numerics are needed.

Graphs never hold weight tensors; their weight placeholders name an entry here. An entry is an in-memory tensor,
a tensor inside a safetensors file (read lazily, cast on load), or a shape-and-dtype-only meta entry (config-only
captures of 7B/30B models). Passes never mutate a store: `with_tensors` / `without` return a new store that
shares every untouched entry, so a streamed real-size compile can later replace the in-memory entries without
changing any pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from qeff_compiler.errors import MetaWeightError, WeightError


@dataclass(frozen=True)
class WeightSpec:
    """Shape and dtype of a weight, known without reading its data."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class _Entry:
    """One stored weight; subclasses say where its data comes from."""

    spec: WeightSpec
    has_data: bool = True

    def load(self) -> torch.Tensor:
        raise NotImplementedError


class _TensorEntry(_Entry):
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor.detach()
        self.spec = WeightSpec(tuple(tensor.shape), tensor.dtype)
        self.has_data = tensor.device.type != "meta"

    def load(self) -> torch.Tensor:
        return self.tensor


@dataclass(frozen=True)
class SafetensorsLocation:
    """Where a tensor lies in a checkpoint, and its stored shape and dtype."""

    path: Path
    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype


class _SafetensorsEntry(_Entry):
    """A tensor inside a safetensors file, cast to `spec.dtype` when loaded."""

    def __init__(self, location: SafetensorsLocation, spec: WeightSpec) -> None:
        self.location, self.spec = location, spec

    def load(self) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        path, key = self.location.path, self.location.key
        try:
            with safe_open(str(path), framework="pt") as handle:
                tensor = handle.get_tensor(key)
        except (SafetensorError, OSError) as exc:
            raise WeightError(f"cannot read weight {key!r} from {path}: {exc}") from exc
        return tensor.to(self.spec.dtype)


class _MetaEntry(_Entry):
    has_data = False

    def __init__(self, spec: WeightSpec) -> None:
        self.spec = spec

    def load(self) -> torch.Tensor:
        return torch.empty(self.spec.shape, dtype=self.spec.dtype, device="meta")


class WeightStore(Mapping[str, WeightSpec]):
    """An immutable name → weight mapping; indexing gives the `WeightSpec`, `tensor(name)` the data."""

    def __init__(self, entries: Mapping[str, _Entry] | None = None) -> None:
        self._entries: dict[str, _Entry] = dict(entries or {})

    # construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> WeightStore:
        """Wrap tensors; tensors that are the same object (tied weights) keep sharing one entry."""
        entries: dict[str, _Entry] = {}
        by_identity: dict[int, _Entry] = {}
        for name, tensor in tensors.items():
            key = id(tensor)
            if key not in by_identity:
                by_identity[key] = _TensorEntry(tensor)
            entries[name] = by_identity[key]
        return cls(entries)

    @classmethod
    def from_specs(cls, specs: Mapping[str, WeightSpec]) -> WeightStore:
        """A store of meta entries: shapes and dtypes only, nothing to compute with."""
        return cls({name: _MetaEntry(spec) for name, spec in specs.items()})

    @classmethod
    def from_safetensors(
        cls, locations: Mapping[str, SafetensorsLocation], dtype: torch.dtype | None = None
    ) -> WeightStore:
        """Lazy entries for tensors in safetensors files, cast to `dtype` on load (None: as stored).

        Names that point at the same file and key (tied weights stored once) share one entry.
        """
        entries: dict[str, _Entry] = {}
        by_location: dict[SafetensorsLocation, _Entry] = {}
        for name, location in locations.items():
            if location not in by_location:
                by_location[location] = _SafetensorsEntry(location, WeightSpec(location.shape, dtype or location.dtype))
            entries[name] = by_location[location]
        return cls(entries)

    # Mapping protocol ----------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> WeightSpec:
        return self._entry(name).spec

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    # data -----------------------------------------------------------------------------------------------------
    @property
    def has_data(self) -> bool:
        """True when every weight can be materialised (no meta entries)."""
        return all(entry.has_data for entry in self._entries.values())

    def tensor(self, name: str) -> torch.Tensor:
        """The weight's data; raises `MetaWeightError` for a meta entry."""
        entry = self._entry(name)
        if not entry.has_data:
            raise MetaWeightError(
                f"weight {name!r} has no data (the program was captured from a config alone); "
                "capture from a model object or a checkpoint directory to run numerics"
            )
        return entry.load()

    def materialize(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Load the named weights once, for an executor that runs the graph many times."""
        return {name: self.tensor(name) for name in names}

    def materialized(self) -> WeightStore:
        """A store whose entries are loaded tensors (tied names still share one), e.g. to share between the
        prefill and decode programs instead of reading a checkpoint twice."""
        loaded: dict[int, _Entry] = {}
        for entry in self._entries.values():
            if id(entry) not in loaded:
                loaded[id(entry)] = _TensorEntry(entry.load()) if entry.has_data else entry
        return WeightStore({name: loaded[id(entry)] for name, entry in self._entries.items()})

    def tied_groups(self) -> list[list[str]]:
        """Names that share one stored entry (e.g. tied input embedding and lm_head)."""
        groups: dict[int, list[str]] = {}
        for name, entry in self._entries.items():
            groups.setdefault(id(entry), []).append(name)
        return [group for group in groups.values() if len(group) > 1]

    def distinct_numel(self, names: Iterable[str] | None = None) -> int:
        """Elements of the named weights (all by default), with tied weights counted once."""
        selected = self._entries if names is None else {n: self._entry(n) for n in names}
        unique = {id(entry): entry for entry in selected.values()}
        return sum(entry.spec.numel for entry in unique.values())

    # derivation ---------------------------------------------------------------------------------------------
    def with_tensors(self, updates: Mapping[str, torch.Tensor]) -> WeightStore:
        """A new store where `updates` add or replace entries; every other entry is shared."""
        entries = dict(self._entries)
        entries.update(WeightStore.from_tensors(updates)._entries)
        return WeightStore(entries)

    def without(self, names: Iterable[str]) -> WeightStore:
        """A new store without the named weights."""
        drop = set(names)
        return WeightStore({n: e for n, e in self._entries.items() if n not in drop})

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise WeightError(f"no weight named {name!r} in the program's weight store") from None
