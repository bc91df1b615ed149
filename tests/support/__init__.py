"""Helpers the tests share: the fake upstream, the Milvus launcher, an OTLP receiver, toy models."""
