"""``check-config`` and ``create-collection``: what an operator runs before (re)starting."""

from __future__ import annotations

import argparse
from pathlib import Path

from extproc.config.env import read_yaml
from extproc.config.milvus import load_milvus_config, looks_like_milvus_config
from extproc.config.report import milvus_lines, settings_lines
from extproc.config.settings import default_config_path, load_config
from extproc.errors import ConfigError


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config.yaml (or a milvus.yaml, told by its shape) and print the effective settings."""
    if args.file and args.config_file and args.file != args.config_file:
        raise ConfigError(f"two config files given ({args.file} and --config {args.config_file}): give one")
    file = Path(args.file or args.config_file or default_config_path(None))
    if file.is_file() and looks_like_milvus_config(read_yaml(file)):
        milvus = load_milvus_config(file)
        print(f"{file}: OK (a Milvus client file, milvus.yaml)")
        lines = milvus_lines(milvus)
    else:
        from extproc.app import check_startable

        settings = load_config(file)
        at_start = check_startable(settings)  # what serve would refuse before listening
        print(f"{settings.source}: OK; effective settings (source: default, file, or env VAR):")
        lines = settings_lines(settings)
        for note in (*settings.notes, *at_start):
            print(f"note: {note}")
    for line in lines:
        print(f"  {line}")
    return 0


def cmd_create_collection(args: argparse.Namespace) -> int:
    """Create the Milvus collection named in milvus.yaml (for auto_create_collection: false)."""
    from extproc.cache.backends.milvus.client import create_collection, open_client
    from extproc.cache.backends.milvus.evidence import create_evidence_collection, evidence_collection
    from extproc.cache.backends.milvus.schema import check_schema

    settings = load_config(default_config_path(args.config))
    if settings.backend_type != "milvus":
        raise ConfigError(f'{settings.source}: backend_type is "{settings.backend_type}", not "milvus"')
    milvus = settings.milvus()
    client = open_client(milvus)
    try:
        evidence = evidence_collection(milvus)
        if not client.has_collection(evidence):  # verification evidence, shared by the replicas
            create_evidence_collection(client, milvus)
            print(f"collection {evidence} created at {milvus.address} (verification evidence)")
        if client.has_collection(milvus.collection):
            description = client.describe_collection(milvus.collection)
            problems = check_schema(description, milvus, milvus.dimension, settings.embedding_identity)
            print(f"collection {milvus.collection} already exists at {milvus.address} (not changed)")
            for problem in problems:
                print(f"  unusable: {problem}")
            return 1 if problems else 0
        create_collection(client, milvus, milvus.dimension, settings.embedding_identity)
        print(
            f"collection {milvus.collection} created at {milvus.address} (dim {milvus.dimension}, "
            f"{milvus.index_type}/{milvus.metric_type})"
        )
        return 0
    finally:
        client.close()
