"""Reusable neural layers of the ERC models, one layer per module (maths and shapes in each
module's docstring). Shared by every model: :mod:`.fusion` (presence-masked modality encoding and
fusion) and :mod:`.rgcn` (relational graph convolution usable in ``forward`` and ``step``)."""
