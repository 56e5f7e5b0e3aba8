"""model/graph.py: the tuple converts to a Graph and back unchanged, and the walk lets tensors go."""
import os
import weakref

import numpy as np
import torch

from model.engines.np_engine import NumpyIntegerModel, numpy_graph, run_numpy
from model.graph import Graph, last_readers
from tests.checks import ROOT


def test_the_shipped_tuple_round_trips():
    state, quant = torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)
    graph = Graph.from_tuple(state, quant)
    assert [op.kind for op in graph.ops] == [op["op"] for op in quant]
    assert graph.ops[1].kernel == quant[1]["kernel"] and graph.ops[1].in_zero_points == [quant[0]["zero_point"]]
    back_state, back_quant = graph.to_tuple()
    assert back_quant == quant
    assert back_state.keys() == state.keys() and all(torch.equal(back_state[k], state[k]) for k in state)


def test_the_walk_keeps_only_what_is_still_read():
    assert last_readers([[], [0], [1], [1, 2], [3]]) == [1, 3, 3, 4, 4]
    state, quant = torch.load(os.path.join(ROOT, "quantization", "lenet_quant.tuple"), weights_only=True)
    graph = numpy_graph(state, quant)
    last = last_readers([op.inputs for op in graph.ops])
    refs = []

    def run(op, xs):
        i = len(refs)
        assert [j for j in range(i) if last[j] < i and refs[j]() is not None] == [], f"op {i}: a dead tensor is held"
        out = run_numpy(op, xs)
        refs.append(weakref.ref(out))
        return out

    images = np.zeros((2, 1, 28, 28), dtype=np.uint8)        # op 0 makes its own int64 copy
    for _ in graph.walk(images, run):
        pass
    assert len(refs) == len(quant)
    np.testing.assert_array_equal(graph.run(images, run_numpy).reshape(2, -1), NumpyIntegerModel(state, quant)(images))
