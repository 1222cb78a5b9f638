"""Knowledge sets: facts (``facts``), sets of them read from and written to JSONL (``knowledge``), their
encoding into token batches (``encoding``) and the one check of a set given as an argument (``checks``).
"""

from __future__ import annotations

from loka.data.encoding import FactBatch, encode_facts, split_fact, token_log_probs
from loka.data.facts import Fact, content_id
from loka.data.knowledge import KnowledgeSet, Prompts

__all__ = [
    "Fact",
    "FactBatch",
    "KnowledgeSet",
    "Prompts",
    "content_id",
    "encode_facts",
    "split_fact",
    "token_log_probs",
]
