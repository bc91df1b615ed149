"""Sentence embeddings: ``base`` (encode function, word vectors, model folder), ``batcher``
(micro-batching off the event loop), the ``onnx_backend`` and ``torch_backend`` (each imports
only ``base``), and ``loader``, which picks a backend from settings.

Import from the submodules; this package imports nothing, so ``python -m
extproc.embedding.onnx_backend`` (the ONNX export) runs without loading the others.
"""
