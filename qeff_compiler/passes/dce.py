"""`dce`: dead-code elimination, including weights nothing reads.

torch.fx's `Graph.eliminate_dead_code` removes pure nodes whose results are unused; this pass also removes
weight placeholders without users and drops those weights from the program's store (e.g. the input embedding of
a tied model, whose graph reads the shared lm_head placeholder instead). Inputs stay: they are the interface.

Before:
    %p_model_transformer_wte_weight = weight 'transformer.wte.weight' : f32[100,64]
    %unsqueeze_2 = aten.unsqueeze(%unsqueeze_1, 3) : i64[1,1,1,1]
After:
    (both gone; 'transformer.wte.weight' no longer in the weight store)
"""

from __future__ import annotations

from qeff_compiler.ir.program import BINDING, Program
from qeff_compiler.passes.base import Pass
from qeff_compiler.passes.registry import register_pass


@register_pass
class DeadCodeElimination(Pass):
    name = "dce"
    summary = "remove unused nodes and weights nothing reads"
    tolerance = 0.0

    def transform(self, program: Program) -> Program:
        graph_module = program.copy_graph()
        graph = graph_module.graph
        graph.eliminate_dead_code()
        for node in list(graph.find_nodes(op="placeholder")):
            if node.meta[BINDING][0] == "weight" and not node.users:
                graph.erase_node(node)
        graph_module.recompile()
        still_read = {node.meta[BINDING][1] for node in graph.find_nodes(op="placeholder")}
        weights = program.weights.without(name for name in program.weights if name not in still_read)
        return program.evolve(graph_module=graph_module, weights=weights)
