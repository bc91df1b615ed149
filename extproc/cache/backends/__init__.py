"""Storage backends behind :class:`~extproc.cache.semantic.SemanticCache` (protocol: ``cache/schema.py``).

They store and search entries; they never see HTTP.
"""
