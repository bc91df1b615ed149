"""The request path: the gRPC server, a processor per path, the decision record, health endpoints.

Talks to the cache through :class:`~extproc.cache.semantic.SemanticCache` only, never to a backend.
"""
