"""Reusable neural layers of the ERC models, one layer per module (maths and shapes in each
layer's docstring, ``reset_parameters()`` on every layer). Shared by every model:
:mod:`.fusion` (presence-masked modality encoding and fusion). The graph layers are
torch-geometric ``MessagePassing`` layers (``RGCNConv`` where the layer is exactly that): their
``forward`` runs on the batched conversation graph, a streaming ``step`` on the new node's
incoming-edge subgraph (:mod:`.incoming`)."""
