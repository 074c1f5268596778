"""Text form of a Program, in the spirit of MLIR's printed IR: one line per node with its result type.

    %linear = aten.linear(%layer_norm, %transformer_blocks_0_attn_wqkv_weight) : f32[1,8,192]

Used by `--print-ir-after`, `qeffc opt`, the pass docs' before/after snippets and test failure messages.
"""

from __future__ import annotations

import torch
import torch.fx

from qeff_compiler.ir.program import BINDING, Program, dtype_short_name, op_short_name


def format_program(program: Program) -> str:
    """The whole program: signature, one line per node, the return."""
    ins = ", ".join(spec.describe() for spec in program.inputs)
    outs = ", ".join(spec.describe() for spec in program.outputs)
    props = ", ".join(sorted(program.properties)) or "-"
    lines = [f"program ({ins}) -> ({outs})  // properties: {props}"]
    for node in program.graph.nodes:
        lines.append("  " + format_node(node))
    return "\n".join(lines)


def format_node(node: torch.fx.Node) -> str:
    """One node as `%name = op(args) : type`."""
    if node.op == "placeholder":
        kind, name = node.meta.get(BINDING, ("input", node.name))
        return f"%{node.name} = {kind} {name!r} : {_result_type(node)}"
    if node.op == "output":
        return "return " + _format_arg(node.args[0])
    args = [_format_arg(a) for a in node.args]
    args += [f"{k}={_format_arg(v)}" for k, v in node.kwargs.items()]
    return f"%{node.name} = {op_short_name(node.target)}({', '.join(args)}) : {_result_type(node)}"


def _format_arg(arg: object) -> str:
    if isinstance(arg, torch.fx.Node):
        return f"%{arg.name}"
    if isinstance(arg, (list, tuple)):
        inner = ", ".join(_format_arg(a) for a in arg)
        return f"[{inner}]"
    if isinstance(arg, torch.dtype):
        return dtype_short_name(arg)
    if isinstance(arg, float):
        return f"{arg:.6g}"
    return repr(arg) if isinstance(arg, str) else str(arg)


def _result_type(node: torch.fx.Node) -> str:
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor):
        return _tensor_type(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, torch.Tensor) for v in value):
        return "(" + ", ".join(_tensor_type(v) for v in value) + ")"
    return "?"


def _tensor_type(value: torch.Tensor) -> str:
    return f"{dtype_short_name(value.dtype)}[{','.join(str(d) for d in value.shape)}]"
