"""Correctness in production: shadow verification of hits, the false-hit bound, feedback.

docs/verification.md describes what it costs, what it guarantees and how to read it.
"""

from extproc.dataplane.verification.entry_ids import EntryIds
from extproc.dataplane.verification.outcomes import Outcomes
from extproc.dataplane.verification.shadow import (
    ENTRY_HEADER,
    FEEDBACK_HEADER,
    SHADOW_HEADER,
    Shadow,
    Verification,
)

__all__ = [
    "ENTRY_HEADER",
    "FEEDBACK_HEADER",
    "SHADOW_HEADER",
    "EntryIds",
    "Outcomes",
    "Shadow",
    "Verification",
]
