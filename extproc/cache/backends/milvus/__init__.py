"""The Milvus backend: persistence and a cache shared by replicas (2.3 standalone/cluster, Lite)."""

from extproc.cache.backends.milvus.backend import MilvusBackend
from extproc.cache.backends.milvus.client import create_collection, open_client

__all__ = ["MilvusBackend", "create_collection", "open_client"]
