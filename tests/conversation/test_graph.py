"""The conversation graph: batch edges equal incremental edges (causal), relation types, windows,
no edges across dialogues, bounded memory."""

from __future__ import annotations

import torch

from realtime_erc.conversation.graph import (
    OTHER_FUTURE,
    OTHER_PAST,
    SAME_FUTURE,
    SAME_PAST,
    SELF,
    IncrementalGraph,
    build_graph,
)


def _batch(lengths, speakers=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    speaker = torch.cat([torch.randint(speakers, (n,), generator=g) for n in lengths])
    position = torch.cat([torch.arange(n) for n in lengths])
    dialogue = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    return speaker, position, dialogue


def _expected_edges(speaker, position, dialogue, past, future):
    """Brute force: every (src, dst, type) triple the definition allows."""
    edges = set()
    n = len(speaker)
    for i in range(n):
        for j in range(n):
            if dialogue[i] != dialogue[j] or not (-future <= i - j <= past):
                continue
            same = bool(speaker[i] == speaker[j])
            if i == j:
                t = SELF
            elif j < i:
                t = SAME_PAST if same else OTHER_PAST
            else:
                t = SAME_FUTURE if same else OTHER_FUTURE
            edges.add((j, i, t))
    return edges


def _edges(graph):
    return set(zip(*graph.edge_index.tolist(), graph.edge_type.tolist(), strict=True))


def test_causal_batch_graph_matches_brute_force():
    speaker, position, dialogue = _batch([25, 3, 14])
    graph = build_graph(speaker, position, past=10)
    assert _edges(graph) == _expected_edges(speaker, position, dialogue, 10, 0)
    assert (graph.offset == graph.edge_index[1] - graph.edge_index[0]).all()
    assert (graph.edge_index[0] <= graph.edge_index[1]).all()  # never an edge from the future


def test_bidirectional_graph_matches_brute_force():
    speaker, position, dialogue = _batch([20, 1, 9], speakers=4, seed=1)
    graph = build_graph(speaker, position, past=5, future=3)
    assert _edges(graph) == _expected_edges(speaker, position, dialogue, 5, 3)
    assert {SAME_FUTURE, OTHER_FUTURE} <= set(graph.edge_type.tolist())


def test_incremental_graph_adds_the_batch_graphs_edges():
    speaker, position, _ = _batch([40, 17], speakers=3, seed=2)
    graph = build_graph(speaker, position, past=10)
    incremental = set()
    start = 0
    for n in (40, 17):
        inc = IncrementalGraph(past=10)
        for i in range(n):
            offset, edge_type = inc.add(int(speaker[start + i]))
            dst = start + i
            assert offset.tolist() == list(range(len(offset)))  # self first, then newest-first
            incremental |= {
                (dst - o, dst, t) for o, t in zip(offset.tolist(), edge_type.tolist(), strict=True)
            }
        start += n
    assert incremental == _edges(graph)


def test_incremental_graph_memory_is_bounded():
    inc = IncrementalGraph(past=4)
    for i in range(1000):
        offset, edge_type = inc.add(i % 7)
    assert inc._speakers.numel() == 5
    assert len(offset) == len(edge_type) == 5
    # speaker of utterance 999 is 999 % 7 = 5; the 4 before are 4, 3, 2, 1: all other speakers
    assert edge_type.tolist() == [SELF, OTHER_PAST, OTHER_PAST, OTHER_PAST, OTHER_PAST]


def test_any_number_of_speakers():
    speaker = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    graph = build_graph(speaker, torch.arange(8), past=10)
    into_last = graph.edge_type[graph.edge_index[1] == 7].tolist()
    assert sorted(into_last) == [SELF, SAME_PAST] + [OTHER_PAST] * 6
