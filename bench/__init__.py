"""Benchmarks: end to end through Envoy, backend lookup scaling, and a side by side with GPTCache."""
