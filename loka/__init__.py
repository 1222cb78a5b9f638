"""loka: localized knowledge ablation.

Locate the MLP neurons and attention heads that carry a piece of knowledge in a causal language
model (``attribution``), turn them off or edit them (``ablation``), and prove the knowledge is gone
against the exact-retrain oracle (``loka``). Layer 1 (models, knowledge sets, the testbed) is
imported here first, so that ``attribution`` and ``ablation`` can import it without cycles.
"""

from loka import testbed
from loka.data import Fact, FactBatch, KnowledgeSet, load_tofu
from loka.models import ModelFingerprint, fingerprint, load_model

__all__ = ["Fact", "FactBatch", "KnowledgeSet", "ModelFingerprint", "fingerprint", "load_model", "load_tofu", "testbed"]
__version__ = "0.1.0"
