"""The residual-knowledge probe (the model-update check): is a fact still readable inside the model
after its output is gone?"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from loka.data import KnowledgeSet
from loka.models import hf_model

__all__ = ["Probe", "fit_probe"]


@dataclass(frozen=True)
class Probe:
    """Per-relation logistic-regression probes at the subject's last token (layer = hidden state
    after block ``layer - 1``; 0 is the embeddings), fitted on retain, scored on forget."""

    layer: int
    retain_accuracy: float  # held-out retain facts, the accuracy that chose the layer
    forget_accuracy: float
    chance: float  # always guessing each relation's most common forget value


@torch.no_grad()
def _subject_states(model: Any, tokenizer: Any, knowledge: KnowledgeSet) -> tuple[np.ndarray, list[int]]:
    """Hidden states [layer, fact, d_model] at each fact's last subject token (facts without a
    subject in the prompt are dropped; their indices are not returned)."""
    device = next(model.parameters()).device
    states, kept = [], []
    for start in range(0, len(knowledge), 64):
        part = KnowledgeSet(knowledge.facts[start : start + 64])
        batch = part.encode(tokenizer).to(device)
        hidden = hf_model(model)(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True, use_cache=False
        ).hidden_states
        stacked = torch.stack(hidden)  # [layer + 1, batch, pos, d_model]
        for row in range(len(part)):
            positions = batch.subject_mask[row].nonzero()
            if len(positions):
                states.append(stacked[:, row, int(positions[-1])].float().cpu().numpy())
                kept.append(start + row)
    if not states:
        raise ValueError("no fact has its subject inside its prompt; the probe needs subjects")
    return np.stack(states, axis=1), kept


def fit_probe(model: Any, tokenizer: Any, forget: KnowledgeSet, retain: KnowledgeSet, *, seed: int) -> Probe:
    with warnings.catch_warnings():  # few samples per class is expected here
        warnings.filterwarnings("ignore", message="The number of unique classes", category=UserWarning)
        return _fit_probes(model, tokenizer, forget, retain, seed=seed)


def _fit_probes(model: Any, tokenizer: Any, forget: KnowledgeSet, retain: KnowledgeSet, *, seed: int) -> Probe:
    def labelled(ks: KnowledgeSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        states, kept = _subject_states(model, tokenizer, ks)
        relations = np.array([ks[i].relation or "" for i in kept])
        targets = np.array([ks[i].target for i in kept])
        return states, relations, targets

    retain_x, retain_rel, retain_y = labelled(retain)
    forget_x, forget_rel, forget_y = labelled(forget)

    def fit(x: np.ndarray, y: np.ndarray) -> Any:
        if len(set(y)) < 2:
            return y[0]  # a constant "probe"
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)

    def predict(probe: Any, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), probe) if isinstance(probe, str) else probe.predict(x)

    relations = sorted(set(forget_rel))
    idx = np.arange(len(retain_y))
    fit_idx, val_idx = train_test_split(idx, test_size=0.25, random_state=seed)
    scores = []
    for layer in range(retain_x.shape[0]):
        hits = 0
        for rel in relations:
            fit_mask = np.isin(idx, fit_idx) & (retain_rel == rel)
            val_mask = np.isin(idx, val_idx) & (retain_rel == rel)
            probe = fit(retain_x[layer][fit_mask], retain_y[fit_mask])
            hits += int((predict(probe, retain_x[layer][val_mask]) == retain_y[val_mask]).sum())
        scores.append(hits / max(1, int(np.isin(retain_rel[val_idx], relations).sum())))
    layer = int(np.argmax(scores))
    hits, chance_hits = 0, 0
    for rel in relations:
        probe = fit(retain_x[layer][retain_rel == rel], retain_y[retain_rel == rel])
        mask = forget_rel == rel
        hits += int((predict(probe, forget_x[layer][mask]) == forget_y[mask]).sum())
        chance_hits += max(np.unique(forget_y[mask], return_counts=True)[1])
    return Probe(layer, float(scores[layer]), hits / len(forget_y), float(chance_hits / len(forget_y)))
