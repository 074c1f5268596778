"""The weight store: weights referenced by name, materialised only when numerics are needed.

Graphs never hold weight tensors; their weight placeholders name an entry here. An entry is an in-memory tensor,
a tensor inside a safetensors file (read lazily, cast on load), a shape-and-dtype-only meta entry (config-only
captures of 7B/30B models), or a *derived* entry: a recipe (cast, clip, quantize, pack) over other entries.
Passes never mutate a store: `with_tensors` / `derive` / `without` return a new store that shares every untouched
entry.

A *streaming* store (`streamed()`, real-size checkpoints) keeps recipes unevaluated: a derived weight is computed
from its sources when read, one weight at a time, so a lowered 7B program is written to disk without ever holding
its weights in memory. A resident store evaluates a recipe when it is added, since numerics (verification, the
host executor) read every weight many times.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from qeff_compiler.errors import MetaWeightError, WeightError

#: weights larger than this (as fp32 for a compile, as stored for a loaded artifact) stream by default: holding
#: them plus the fp32 copies numerics make would no longer fit comfortably in a machine of tens of GB
STREAM_ABOVE_BYTES = 4 * 2**30


#: a store's record of the derivations it made: (outputs, specs, source entry ids) → (source entries, made entries)
_Memo = dict[
    tuple[tuple[str, ...], tuple["WeightSpec", ...], tuple[int, ...]], tuple[tuple["_Entry", ...], tuple["_Entry", ...]]
]


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

    def load_rows(self, rows: int) -> torch.Tensor:
        """The first `rows` rows of the weight (a checkpoint reads only those)."""
        return self.load()[:rows]

    def load_stored(self) -> torch.Tensor:
        """The weight's data in the dtype it is stored in (a bf16 checkpoint's tensor before the cast to fp32)."""
        return self.load()


class _TensorEntry(_Entry):
    """A tensor (in memory or memory-mapped), cast to `dtype` when loaded if it is stored otherwise."""

    def __init__(self, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        self.tensor = tensor.detach()
        self.spec = WeightSpec(tuple(tensor.shape), dtype or tensor.dtype)
        self.has_data = tensor.device.type != "meta"

    def load(self) -> torch.Tensor:
        return self.tensor.to(self.spec.dtype)

    def load_rows(self, rows: int) -> torch.Tensor:
        return self.tensor[:rows].to(self.spec.dtype)

    def load_stored(self) -> torch.Tensor:
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
        return self._read(None)

    def load_rows(self, rows: int) -> torch.Tensor:
        return self._read(rows)

    def load_stored(self) -> torch.Tensor:
        return self._read(None, cast=False)

    def _read(self, rows: int | None, *, cast: bool = True) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        path, key = self.location.path, self.location.key
        try:
            with safe_open(str(path), framework="pt") as handle:
                tensor = handle.get_tensor(key) if rows is None else handle.get_slice(key)[:rows]
        except (SafetensorError, OSError) as exc:
            raise WeightError(f"cannot read weight {key!r} from {path}: {exc}") from exc
        return tensor.to(self.spec.dtype) if cast else tensor


@dataclass(frozen=True, eq=False)
class Derivation:
    """How weights `outputs` (of `specs`) are computed from weights `sources`: `fn(*sources)` returns one tensor
    per output. Several outputs of one derivation (e.g. codes and scales) are computed together."""

    outputs: tuple[str, ...]
    specs: tuple[WeightSpec, ...]
    sources: tuple[str, ...]
    fn: Callable[..., Sequence[torch.Tensor]]
    #: `fn` takes its sources in the dtype they are stored in (e.g. a bf16 checkpoint's tensor) and converts
    #: them itself, a chunk at a time: no fp32 copy of a whole source (a 7B embedding is 0.8 GB in fp32)
    reads_stored: bool = False


class _Recipe:
    """A derivation bound to its source entries (not names: a later `without` may drop a source's name)."""

    def __init__(self, derivation: Derivation, sources: tuple[_Entry, ...]) -> None:
        self.derivation, self.sources = derivation, sources

    def evaluate(self) -> tuple[torch.Tensor, ...]:
        """Run the recipe, checking it made what its specs promise (a wrong recipe must not write bad weights)."""
        stored = self.derivation.reads_stored
        results = tuple(
            self.derivation.fn(*(source.load_stored() if stored else source.load() for source in self.sources))
        )
        specs = self.derivation.specs
        made = [WeightSpec(tuple(t.shape), t.dtype) for t in results]
        if made != list(specs):
            raise WeightError(f"recipe for {list(self.derivation.outputs)} made {made}, its specs say {list(specs)}")
        return results


@functools.lru_cache(maxsize=1)
def _evaluate_last(recipe: _Recipe) -> tuple[torch.Tensor, ...]:
    """The last recipe's results, so reading its outputs one after another (codes, then scales) computes once;
    one slot only, so streaming never keeps more than one weight's results."""
    return recipe.evaluate()


def release_evaluated() -> None:
    """Drop the one cached recipe result (a writer calls this when it is done)."""
    _evaluate_last.cache_clear()


class _DerivedEntry(_Entry):
    """Output `index` of a recipe, computed when loaded."""

    def __init__(self, recipe: _Recipe, index: int) -> None:
        self.recipe, self.index = recipe, index
        self.spec = recipe.derivation.specs[index]
        self.has_data = all(source.has_data for source in recipe.sources)

    def load(self) -> torch.Tensor:
        return _evaluate_last(self.recipe)[self.index]


class _MeteredEntry(_Entry):
    """Another entry whose reads are reported (bytes) to a callback."""

    def __init__(self, entry: _Entry, on_read: Callable[[int], None]) -> None:
        self.entry, self.on_read, self.spec = entry, on_read, entry.spec

    def load(self) -> torch.Tensor:
        tensor = self.entry.load()
        self.on_read(self.spec.nbytes)
        return tensor

    def load_rows(self, rows: int) -> torch.Tensor:
        return self.entry.load_rows(rows)

    def load_stored(self) -> torch.Tensor:
        tensor = self.entry.load_stored()
        self.on_read(self.spec.nbytes)
        return tensor


class _CheckedEntry(_Entry):
    """Another entry whose data passes `check(name, tensor)` the first time it is read (a checkpoint's weights
    are checked as they are read, streaming or not, without a separate pass over the files)."""

    def __init__(self, entry: _Entry, name: str, check: Callable[[str, torch.Tensor], None]) -> None:
        self.entry, self.name, self.check, self.spec = entry, name, check, entry.spec
        self.checked = False

    def load(self) -> torch.Tensor:
        return self._checked_once(self.entry.load())

    def load_rows(self, rows: int) -> torch.Tensor:
        tensor = self.entry.load_rows(rows)
        self.check(self.name, tensor)
        return tensor

    def load_stored(self) -> torch.Tensor:
        return self._checked_once(self.entry.load_stored())

    def _checked_once(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` (the whole entry, as computed or as stored) after its first check; later reads skip it."""
        if not self.checked:
            self.check(self.name, tensor)
            self.checked = True
        return tensor


class _RowsEntry(_Entry):
    """The first `rows` rows of another entry (a reduced model's vocabulary: `WeightStore.select`)."""

    def __init__(self, entry: _Entry, rows: int) -> None:
        self.entry, self.rows, self.has_data = entry, rows, entry.has_data
        self.spec = WeightSpec((rows, *entry.spec.shape[1:]), entry.spec.dtype)

    def load(self) -> torch.Tensor:
        return self.entry.load_rows(self.rows)


class _MetaEntry(_Entry):
    has_data = False

    def __init__(self, spec: WeightSpec) -> None:
        self.spec = spec

    def load(self) -> torch.Tensor:
        return torch.empty(self.spec.shape, dtype=self.spec.dtype, device="meta")


class WeightStore(Mapping[str, WeightSpec]):
    """An immutable name → weight mapping; indexing gives the `WeightSpec`, `tensor(name)` the data."""

    def __init__(
        self, entries: Mapping[str, _Entry] | None = None, *, streaming: bool = False, memo: _Memo | None = None
    ) -> None:
        self._entries: dict[str, _Entry] = dict(entries or {})
        #: weights are read one at a time when needed; nothing should run numerics over all of them at once
        self.streaming = streaming
        #: derivations already made from these entries (`sharing_derivations`), shared by every store made from this
        self._memo = memo

    # construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> WeightStore:
        """Wrap tensors (cast to `dtype` when loaded; None: as they are); tensors that are the same object (tied
        weights) keep sharing one entry."""
        entries: dict[str, _Entry] = {}
        by_identity: dict[int, _Entry] = {}
        for name, tensor in tensors.items():
            key = id(tensor)
            if key not in by_identity:
                by_identity[key] = _TensorEntry(tensor, dtype)
            entries[name] = by_identity[key]
        return cls(entries)

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
        prefill and decode programs instead of reading a checkpoint twice. Each tensor is kept in the dtype it
        is stored in and cast when read (a bf16 checkpoint stays half the size of its fp32 weights)."""
        loaded: dict[int, _Entry] = {}
        for entry in self._entries.values():
            if id(entry) not in loaded:
                loaded[id(entry)] = _TensorEntry(entry.load_stored(), entry.spec.dtype) if entry.has_data else entry
        return WeightStore(
            {name: loaded[id(entry)] for name, entry in self._entries.items()},
            streaming=self.streaming,
            memo=self._memo,
        )

    def streamed(self, on_read: Callable[[int], None] | None = None) -> WeightStore:
        """This store, streaming: recipes added later stay unevaluated until a weight is read. `on_read(bytes)`
        is called after each read of one of its weights (progress bars of the stages that stream them)."""
        if on_read is None:
            return WeightStore(self._entries, streaming=True, memo=self._memo)
        wrapped: dict[int, _Entry] = {}
        for entry in self._entries.values():
            wrapped.setdefault(id(entry), _MeteredEntry(entry, on_read) if entry.has_data else entry)
        return WeightStore(
            {name: wrapped[id(entry)] for name, entry in self._entries.items()}, streaming=True, memo=self._memo
        )

    def checked(self, check: Callable[[str, torch.Tensor], None]) -> WeightStore:
        """This store with `check(name, tensor)` run on each weight's data when it is first read (tied names share
        one check, named by the first)."""
        wrapped: dict[int, _Entry] = {}
        for name, entry in self._entries.items():
            wrapped.setdefault(id(entry), _CheckedEntry(entry, name, check) if entry.has_data else entry)
        return WeightStore(
            {name: wrapped[id(entry)] for name, entry in self._entries.items()},
            streaming=self.streaming,
            memo=self._memo,
        )

    def nbytes(self, names: Iterable[str] | None = None) -> int:
        """Bytes of the named weights (all by default) as stored, tied weights counted once."""
        selected = self._entries if names is None else {n: self._entry(n) for n in names}
        return sum(entry.spec.nbytes for entry in {id(e): e for e in selected.values()}.values())

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
    def sharing_derivations(self) -> WeightStore:
        """This store, and every store derived from it, sharing the weights their derivations make. For the
        specializations of one compile (the same pipeline on the same weights): prefill and decode then hold
        one lowered copy, not two. Programs with other pipelines must not share a memo."""
        return WeightStore(self._entries, streaming=self.streaming, memo={})

    def select(self, sources: Mapping[str, tuple[str, int | None]]) -> WeightStore:
        """A store whose weight `name` reads the first `rows` rows of `source` (`name: (source, rows)`; None: the
        whole weight): a reduced model (some layers, part of the vocabulary) over these weights, reading no
        more of a checkpoint than it uses. Names of one source entry and row count share one entry. The new store
        is resident (not streaming), like any small model's."""
        made: dict[tuple[int, int | None], _Entry] = {}
        entries: dict[str, _Entry] = {}
        for name, (source, rows) in sources.items():
            entry = self._entry(source)
            key = (id(entry), rows)
            if key not in made:
                made[key] = entry if rows is None or rows >= entry.spec.shape[0] else _RowsEntry(entry, rows)
            entries[name] = made[key]
        return WeightStore(entries)

    def with_tensors(self, updates: Mapping[str, torch.Tensor]) -> WeightStore:
        """A new store where `updates` add or replace entries; every other entry is shared."""
        entries = dict(self._entries)
        entries.update(WeightStore.from_tensors(updates)._entries)
        return WeightStore(entries, streaming=self.streaming, memo=self._memo)

    def derive(self, derivations: Iterable[Derivation]) -> WeightStore:
        """A new store with each derivation's outputs added (or replaced). A streaming store keeps the recipes
        lazy; a resident one evaluates those whose sources have data now; over meta sources they stay meta. In a
        store `sharing_derivations`, a derivation made before (same outputs and specs, same source entries) is
        not made again: its entries are reused."""
        entries = dict(self._entries)
        for derivation in derivations:
            sources = tuple(self._entry(name) for name in derivation.sources)
            key = (derivation.outputs, derivation.specs, tuple(map(id, sources)))
            if self._memo is not None and key in self._memo:
                made = self._memo[key][1]
            else:
                recipe = _Recipe(derivation, sources)
                made = tuple(_DerivedEntry(recipe, i) for i in range(len(derivation.outputs)))
                if not self.streaming and made[0].has_data:
                    made = tuple(map(_TensorEntry, recipe.evaluate()))
                if self._memo is not None:
                    self._memo[key] = (sources, made)  # the sources stay alive, so their ids stay theirs
            entries.update(zip(derivation.outputs, made, strict=True))
        return WeightStore(entries, streaming=self.streaming, memo=self._memo)

    def tie(self, aliases: Mapping[str, str]) -> WeightStore:
        """A new store where each alias names the same entry as its target (tied weights stay stored once)."""
        entries = dict(self._entries)
        entries.update({alias: self._entry(target) for alias, target in aliases.items()})
        return WeightStore(entries, streaming=self.streaming, memo=self._memo)

    def without(self, names: Iterable[str]) -> WeightStore:
        """A new store without the named weights."""
        drop = set(names)
        return WeightStore(
            {n: e for n, e in self._entries.items() if n not in drop}, streaming=self.streaming, memo=self._memo
        )

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise WeightError(f"no weight named {name!r} in the program's weight store") from None


def should_stream(stream: bool | None, weights: WeightStore) -> bool:
    """Whether to stream `weights`: as asked, or (None) when they have data and exceed `STREAM_ABOVE_BYTES`."""
    if stream is not None:
        return stream and weights.has_data
    return weights.has_data and weights.nbytes() > STREAM_ABOVE_BYTES
