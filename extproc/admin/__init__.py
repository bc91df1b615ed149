"""The admin API (off the request path): stats, flush, import/export, live config."""
