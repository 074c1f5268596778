"""Forget the generated Python source of torch.fx graph modules that no longer exist.

Every `GraphModule.recompile()` (and every new GraphModule) stores its generated source in torch.fx's private
loader cache and a `linecache` entry, keyed by a fresh `<eval_with_key>.N` file name, so tracebacks can show
it; neither is ever removed. Loading a compiled model, binding its executors and running passes recompile
graphs, so a process that loads and runs models repeatedly (a server reloading models) kept every version's
source: tens of KB per load, and the heap fragmentation of small blocks that outlive the tensors around them.
`forget_dead_sources` drops the entries whose graph module class is gone (each GraphModule has a class of its
own, whose `forward` was compiled under that key).
"""

from __future__ import annotations

import linecache

import torch.fx
from torch.fx import graph_module as _fx_graph_module

_KEY_PREFIX = "<eval_with_key>"


def _live_keys() -> set[str]:
    """The source keys of the `forward` of every GraphModule class still alive."""
    keys = set()
    pending = list(torch.fx.GraphModule.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        forward = cls.__dict__.get("forward")
        code = getattr(forward, "__code__", None)
        if code is not None:
            keys.add(code.co_filename)
    return keys


def forget_dead_sources() -> int:
    """Drop the cached sources (and their linecache entries) of graph modules that were freed; returns how many."""
    cache: dict[str, str] = _fx_graph_module._loader.eval_cache
    live = _live_keys()
    dead = [key for key in cache if key.startswith(_KEY_PREFIX) and key not in live]
    for key in dead:
        del cache[key]
        linecache.cache.pop(key, None)
    return len(dead)
