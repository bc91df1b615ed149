"""Tracing, metrics and logs. Never imports the request path: it reads it through protocols."""
