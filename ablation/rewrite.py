"""Rewriting: a closed-form, covariance-constrained edit of MLP output projections (ROME / MEMIT).

An MLP layer's output projection is a linear associative memory (Geva et al. 2021; ROME, Meng et
al. 2022): at every token it reads a *key* ``k`` (the activation at ``blocks.{l}.mlp.hook_post``,
``[d_mlp]``) and writes a *value* ``k @ W_out`` (``[d_model]``) into the residual stream. A fact
such as "Kowen Prazed was born in -> Paris" is recalled at a few positions (the subject's last
token, the last prompt token), so changing what ``W_out`` returns for *those* keys changes the
fact, while keys of other text should map exactly as before. With forget keys ``K_f``
(``[n_f, d_mlp]``), the residual ``R = V* - K_f W_out`` each key's value must move by, and the
uncentred covariance ``C = E[k k^T]`` of keys over every token of a retain corpus, the update
``Delta`` (``[d_mlp, d_model]``) minimises::

    (1/n_f) ||K_f Delta - R||^2  +  lam * E_retain ||k Delta||^2

whose normal equations are ``(K_f^T K_f / n_f + lam C) Delta = K_f^T R / n_f`` (solved in float64,
with a small ridge if the left side is singular). ``lam`` trades how exactly the forget keys reach
their values against how little the outputs on retain text move; its rank is at most ``n_f``.

What the forget keys should map to (``V*``):

* ``target="unknown"`` (erase): what the model would say about a subject it does not know. By
  default (``erase_values="match"``) a vector added to the residual stream after the last edited
  layer, at the key positions, is optimised (a few Adam steps plus a small norm penalty, as in
  ROME/MEMIT) so that the next-token distribution at the answer position matches the model's mean
  distribution on ``reference`` facts (holdout people, when given; else the retain facts) of the
  same relation and prompt template. ``erase_values="mean"`` instead asks each layer for the mean
  of ``k @ W_out`` over those reference facts at the same position; on the testbed that removes
  the MLP's share of the answer but not the rest (attention still carries it), so it erases little.
* ``target={fact_id: new_target}`` (update): as in ROME/MEMIT, a vector ``delta`` added to the
  residual stream after the last edited layer is optimised (a few Adam steps on
  ``-log p(new target)`` plus a small norm penalty) and the layers are asked to produce it.

With several layers (MEMIT, Meng et al. 2023) the desired change ``z* - z`` of the residual stream
after the *last* edited layer is spread over the layers: for layers ``l_1 < ... < l_L`` in order,
with the earlier layers' edits applied, layer ``l_i`` takes ``R_i = (z* - z_current) / (L - i + 1)``.
With ``erase_values="mean"``, ``z* - z`` is the sum over layers of ``V*_l - V_l``. One layer is ROME's edit
with the covariance constraint written as a least-squares penalty.

Keys are read at ``positions``: ``"answer"`` (the last prompt token), ``"subject"`` (the subject's
last token) or ``"both"``, on each forget prompt and on its paraphrase prompts. The covariance is
per model, not per request; compute it once with :func:`key_covariance` and save it::

    cov = key_covariance(model, retain, layers=[3])
    cov.save("cov.safetensors")                              # + cov.json, readable
    result = rewrite(model, forget, retain=None, covariance=KeyCovariance.load("cov.safetensors"),
                     reference=holdout)
    result.model                                             # the edited copy (bridge)
    with result.hooks(model): ...                            # the same edit, as TL hooks

The edit is baked by adding ``Delta`` to the HF weight (GPT-2's ``Conv1D`` stores ``[d_mlp,
d_model]``, NeoX's ``dense_4h_to_h`` and Llama's ``down_proj`` store ``[d_model, d_mlp]``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from einops import einsum
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from loka.data import Fact, FactBatch, KnowledgeSet
from loka.models import (
    ModelFingerprint,
    architecture,
    fingerprint,
    hf_model,
    hf_state_dict,
    logits,
    plain_copy,
    same_kind_as,
)

__all__ = [
    "POSITIONS",
    "KeyCovariance",
    "Positions",
    "RewriteResult",
    "key_covariance",
    "rewrite",
    "solve_update",
    "unknown_distributions",
]

Positions = Literal["answer", "subject", "both"]
POSITIONS: tuple[Positions, ...] = get_args(Positions)
EraseValues = Literal["match", "mean"]
ERASE_VALUES: tuple[EraseValues, ...] = get_args(EraseValues)
DEFAULT_LAM = 1.0
"""Weight of the retain-covariance penalty (per-key averages on both sides; see the bench)."""
BATCH_SIZE = 64
HookList = list[tuple[str, Callable[..., Tensor]]]


# --------------------------------------------------------------------------------------------
# The solve
# --------------------------------------------------------------------------------------------


def solve_update(
    keys: Float[Tensor, "n d_mlp"],
    residuals: Float[Tensor, "n d_model"],
    covariance: Float[Tensor, "d_mlp d_mlp"],
    lam: float,
    *,
    ridge: float = 1e-8,
) -> Float[Tensor, "d_mlp d_model"]:
    """``argmin_D (1/n)||keys D - residuals||^2 + lam * tr(D^T covariance D)``, in float64.

    Solves ``(K^T K / n + lam C) D = K^T R / n``; if that matrix is singular or nearly so
    (condition number over ``1 / ridge``), ``ridge`` times its mean diagonal is added to it, which
    leaves directions that nothing constrains (nearly) unchanged.
    """
    k, r, c = keys.double(), residuals.double(), covariance.double().to(keys.device)
    n = k.shape[0]
    lhs = k.T @ k / n + lam * c
    rhs = k.T @ r / n
    eigenvalues = torch.linalg.eigvalsh(lhs)  # symmetric positive semi-definite
    if eigenvalues[0] <= ridge * eigenvalues[-1].clamp(min=1e-300):
        eye = torch.eye(lhs.shape[0], dtype=lhs.dtype, device=lhs.device)
        lhs = lhs + ridge * lhs.diagonal().mean().clamp(min=1e-300) * eye
    solution = torch.linalg.solve(lhs, rhs)
    return solution


# --------------------------------------------------------------------------------------------
# Hooks: read keys, add the edit
# --------------------------------------------------------------------------------------------


def _post(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


def _saver(store: dict[str, Tensor], name: str) -> Callable[..., Tensor]:
    def save(act: Tensor, hook: Any) -> Tensor:
        store[name] = act
        return act

    return save


def _edit_hooks(deltas: Mapping[int, Tensor], store: dict[str, Tensor]) -> HookList:
    """Hooks that save ``hook_post`` and add ``hook_post @ Delta`` to ``hook_mlp_out``."""
    hooks: HookList = []
    for layer, delta in deltas.items():

        def add(out: Tensor, hook: Any, layer: int = layer, delta: Tensor = delta) -> Tensor:
            key = store[_post(layer)]
            return out + einsum(key, delta.to(key.dtype), "b p m, m d -> b p d")

        hooks.append((f"blocks.{layer}.hook_mlp_out", add))
    return hooks


def _run(
    model: TransformerBridge,
    batch: FactBatch,
    *,
    keys_at: Sequence[int] = (),
    deltas: Mapping[int, Tensor] | None = None,
    resid_layer: int | None = None,
    resid_add: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Float[Tensor, "batch pos d_vocab"], dict[str, Tensor]]:
    """One forward pass with ``deltas`` applied; returns the logits and the saved activations
    (``hook_post`` of ``keys_at`` and the edited layers, ``resid`` after ``resid_layer``, to which
    ``resid_add`` may add something first)."""
    deltas = deltas or {}
    store: dict[str, Tensor] = {}

    hooks: HookList = [(_post(layer), _saver(store, _post(layer))) for layer in sorted(set(keys_at) | set(deltas))]
    hooks += _edit_hooks(deltas, store)
    if resid_layer is not None:

        def resid(act: Tensor, hook: Any) -> Tensor:
            act = resid_add(act) if resid_add is not None else act
            store["resid"] = act
            return act

        hooks.append((f"blocks.{resid_layer}.hook_resid_post", resid))
    with model.hooks(fwd_hooks=hooks):
        out = logits(model, batch.input_ids, attention_mask=batch.attention_mask)
    return out, store


def _at(act: Float[Tensor, "batch pos d"], index: Int[Tensor, "batch cls"]) -> Float[Tensor, "batch cls d"]:
    return act.gather(1, index.unsqueeze(-1).expand(-1, -1, act.shape[-1]))


# --------------------------------------------------------------------------------------------
# Key covariance
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyCovariance:
    """``E[k k^T]`` of ``hook_post`` over every real token of a retain corpus, per layer.

    ``matrices[i]`` belongs to ``layers[i]``; ``fingerprint`` names the model it was computed on.
    Saved as safetensors (the matrices) with a readable JSON beside it (same stem).
    """

    layers: tuple[int, ...]
    matrices: Float[Tensor, "layer d_mlp d_mlp"]
    n_tokens: int
    fingerprint: ModelFingerprint

    def of(self, layer: int) -> Float[Tensor, "d_mlp d_mlp"]:
        if layer not in self.layers:
            raise ValueError(f"this key covariance has layers {list(self.layers)}, not layer {layer}")
        return self.matrices[self.layers.index(layer)]

    def metadata(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "n_tokens": self.n_tokens, "fingerprint": self.fingerprint.to_dict()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (safetensors) and ``path`` with suffix ``.json`` (the metadata)."""
        path = Path(path)
        meta = json.dumps(self.metadata(), indent=2)
        save_file({"covariance": self.matrices.contiguous().cpu()}, str(path), metadata={"loka": meta})
        path.with_suffix(".json").write_text(meta + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyCovariance:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"key covariance file {str(path)!r} does not exist")
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise FileNotFoundError(f"key covariance {str(path)!r} has no metadata file {str(meta_path)!r}")
        meta = json.loads(meta_path.read_text())
        matrices = load_file(str(path))["covariance"]
        layers = tuple(int(layer) for layer in meta["layers"])
        if matrices.ndim != 3 or matrices.shape[0] != len(layers):
            raise ValueError(f"{path}: expected {len(layers)} covariance matrices, got shape {tuple(matrices.shape)}")
        return cls(layers, matrices, int(meta["n_tokens"]), ModelFingerprint.from_dict(meta["fingerprint"]))


@torch.no_grad()
def key_covariance(
    model: TransformerBridge, retain: KnowledgeSet, *, layers: Sequence[int] | None = None, batch_size: int = 64
) -> KeyCovariance:
    """The key covariance of ``layers`` (default: the last) over every real token of ``retain``'s
    texts (BOS, prompt and target), in float64."""
    _check_model(model)
    layers = _check_layers(model, layers)
    d_mlp = _w_out(model, layers[0]).shape[0]
    sums = torch.zeros(len(layers), d_mlp, d_mlp, dtype=torch.float64)
    n_tokens = 0
    for batch in retain.batches(model, batch_size):
        batch = batch.to(_device(model))
        _, store = _run(model, batch, keys_at=layers)
        real = batch.attention_mask.bool()
        for i, layer in enumerate(layers):
            k = store[_post(layer)][real].double().cpu()
            sums[i] += k.T @ k
        n_tokens += int(real.sum())
    return KeyCovariance(layers, sums / n_tokens, n_tokens, fingerprint(model))


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewriteResult:
    """An edited copy of the model and what was done to it.

    ``deltas[i]`` (``[d_mlp, d_model]``, TL orientation) was added to ``W_out`` of ``layers[i]``;
    ``norms`` and ``ranks`` are its Frobenius norms and ranks. ``n_keys`` counts the forget keys
    per layer (facts x prompts x positions).
    """

    model: Any
    layers: tuple[int, ...]
    positions: Positions
    kind: Literal["erase", "update"]
    lam: float
    deltas: tuple[Float[Tensor, "d_mlp d_model"], ...]
    norms: tuple[float, ...]
    ranks: tuple[int, ...]
    n_keys: int
    n_facts: int

    def fwd_hooks(self) -> HookList:
        """TL forward hooks that apply the same edit to the *original* model."""
        store: dict[str, Tensor] = {}
        deltas = dict(zip(self.layers, self.deltas, strict=True))
        return [(_post(layer), _saver(store, _post(layer))) for layer in self.layers] + _edit_hooks(deltas, store)

    @contextlib.contextmanager
    def hooks(self, model: TransformerBridge) -> Iterator[TransformerBridge]:
        """``with result.hooks(original):`` runs ``original`` with the edit applied by hooks."""
        with model.hooks(fwd_hooks=self.fwd_hooks()):
            yield model

    def settings(self) -> dict[str, Any]:
        """What to record as ``export_checkpoint(..., method="rewrite", settings=...)``."""
        return {
            "layers": list(self.layers),
            "positions": self.positions,
            "kind": self.kind,
            "lam": self.lam,
            "norms": list(self.norms),
            "ranks": list(self.ranks),
            "n_keys": self.n_keys,
            "n_facts": self.n_facts,
        }


# --------------------------------------------------------------------------------------------
# Input checks and model helpers
# --------------------------------------------------------------------------------------------


def _device(model: Any) -> torch.device:
    return next(hf_model(model).parameters()).device


def _check_model(model: Any) -> None:
    if not isinstance(model, TransformerBridge):
        raise TypeError(
            f"rewrite reads keys through TransformerLens hooks: pass a TransformerBridge, got {type(model).__name__}"
        )


def _n_layers(model: Any) -> int:
    return int(hf_model(model).config.num_hidden_layers)


def _check_layers(model: Any, layers: Sequence[int] | int | None) -> tuple[int, ...]:
    n = _n_layers(model)
    if layers is None:
        return (n - 1,)
    if isinstance(layers, int):
        layers = (layers,)
    chosen = tuple(sorted(set(layers)))
    if not chosen:
        raise ValueError("layers is empty; pass at least one MLP layer (or None for the last one)")
    bad = [layer for layer in chosen if not isinstance(layer, int) or not 0 <= layer < n]
    if bad:
        raise ValueError(f"layer(s) {bad} do not exist: this model has MLP layers 0..{n - 1}")
    return chosen


def _w_out(model: Any, layer: int, state: Mapping[str, Tensor] | None = None) -> Float[Tensor, "d_mlp d_model"]:
    """``W_out`` of ``layer`` in TL orientation (a view of the HF weight)."""
    spec = architecture(model)
    weight = (state or hf_state_dict(model))[spec.name(spec.mlp_out_weight, layer)]
    return weight if spec.mlp_out_neuron_dim == 0 else weight.T


def _check_knowledge(value: Any, what: str) -> KnowledgeSet:
    if not isinstance(value, KnowledgeSet):
        raise ValueError(f"{what} must be a non-empty loka.data.KnowledgeSet, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------------------------
# Prompts and positions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prompts:
    """Every prompt of some facts (the prompt itself = variant 0, then each paraphrase), encoded."""

    knowledge: KnowledgeSet
    groups: tuple[tuple[str | None, int], ...]  # (relation, variant) per prompt

    @classmethod
    def of(cls, facts: KnowledgeSet) -> _Prompts:
        prompts, groups = [], []
        for fact in facts:
            for variant, prompt in enumerate((fact.prompt, *fact.paraphrases)):
                prompts.append(Fact(f"{fact.id}#{variant}", prompt, fact.target, fact.subject, fact.relation))
                groups.append((fact.relation, variant))
        return cls(KnowledgeSet(tuple(prompts), name=f"{facts.name}/prompts"), tuple(groups))

    def batches(self, model: Any) -> Iterator[tuple[slice, FactBatch]]:
        for start, batch in zip(
            range(0, len(self.knowledge), BATCH_SIZE), self.knowledge.batches(model, BATCH_SIZE), strict=True
        ):
            yield slice(start, start + len(batch)), batch.to(_device(model))


def _positions(batch: FactBatch, positions: Positions) -> Int[Tensor, "batch cls"]:
    answer = batch.answer_positions
    if positions == "answer":
        return answer[:, None]
    has_subject = batch.subject_mask.any(-1)
    if not has_subject.all():
        missing = batch.fact_ids[int((~has_subject).nonzero()[0])]
        raise ValueError(
            f"positions={positions!r} needs each prompt to contain its fact's subject, but {missing!r} does not"
        )
    index = torch.arange(batch.subject_mask.shape[1], device=answer.device)
    subject = torch.where(batch.subject_mask, index, -1).amax(-1)
    return subject[:, None] if positions == "subject" else torch.stack([answer, subject], -1)


@torch.no_grad()
def _keys(
    model: TransformerBridge,
    prompts: _Prompts,
    layers: Sequence[int],
    positions: Positions,
    deltas: Mapping[int, Tensor] | None = None,
    resid_layer: int | None = None,
) -> tuple[dict[int, Tensor], Tensor | None]:
    """Keys ``[n_prompts, cls, d_mlp]`` per layer and the residual after ``resid_layer``."""
    keys: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    resid: list[Tensor] = []
    for _, batch in prompts.batches(model):
        index = _positions(batch, positions)
        _, store = _run(model, batch, keys_at=layers, deltas=deltas, resid_layer=resid_layer)
        for layer in layers:
            keys[layer].append(_at(store[_post(layer)], index).double())
        if resid_layer is not None:
            resid.append(_at(store["resid"], index).double())
    return {layer: torch.cat(k) for layer, k in keys.items()}, torch.cat(resid) if resid else None


# --------------------------------------------------------------------------------------------
# Target residual changes
# --------------------------------------------------------------------------------------------


def _erase_change(
    model: TransformerBridge,
    forget: _Prompts,
    reference: KnowledgeSet,
    layers: Sequence[int],
    positions: Positions,
    forget_keys: Mapping[int, Tensor],
) -> Float[Tensor, "n cls d_model"]:
    """``sum_l (V*_l - V_l)``: each layer's value moved to the reference mean of its group."""
    ref = _Prompts.of(reference)
    ref_keys, _ = _keys(model, ref, layers, positions)
    change = torch.zeros(0)
    for layer in layers:
        means: dict[Any, Tensor] = {}
        for key in set(ref.groups) | {(g[0], None) for g in ref.groups} | {(None, None)}:
            rows = [i for i, g in enumerate(ref.groups) if key[0] in (None, g[0]) and key[1] in (None, g[1])]
            means[key] = ref_keys[layer][rows].mean(0)
        targets = torch.stack([
            means.get(g, means.get((g[0], None), means[(None, None)])) for g in forget.groups
        ])  # fmt: skip
        w = _w_out(model, layer).double().to(targets.device)
        step = (targets - forget_keys[layer]) @ w
        change = step if change.numel() == 0 else change + step
    return change


Loss = Callable[[Tensor, FactBatch, slice], Tensor]


def _nll_loss(logits_: Tensor, batch: FactBatch, rows: slice) -> Tensor:
    """Mean per-token ``-log p(target)`` (the update objective)."""
    return -(batch.target_log_probs(logits_).sum(-1) / batch.target_mask.sum(-1)).mean()


@torch.no_grad()
def _reference_distributions(
    model: TransformerBridge, prompts: _Prompts, reference: KnowledgeSet
) -> Float[Tensor, "n d_vocab"]:
    """For each prompt, the model's mean next-token distribution at the answer position over the
    reference facts of the same relation and prompt template (what it says about unknown people)."""
    ref = _Prompts.of(reference)
    probs = []
    for _, batch in ref.batches(model):
        out, _ = _run(model, batch)
        probs.append(out[torch.arange(len(batch)), batch.answer_positions].float().softmax(-1))
    p = torch.cat(probs)
    return torch.stack([p[_group_rows(ref.groups, group)].mean(0) for group in prompts.groups])


def unknown_distributions(
    model: TransformerBridge, forget: KnowledgeSet, reference: KnowledgeSet
) -> tuple[KnowledgeSet, Float[Tensor, "prompt d_vocab"]]:
    """Every prompt of ``forget`` (each fact's prompt, then its paraphrases) and, for each, what
    the model says about people it does not know: its mean next-token distribution at the answer
    position over ``reference`` facts (e.g. holdout people) of the same relation and template.
    This is what an erasure asks the forget prompts to output."""
    _check_model(model)
    prompts = _Prompts.of(_check_knowledge(forget, "forget"))
    return prompts.knowledge, _reference_distributions(model, prompts, _check_knowledge(reference, "reference"))


def _group_rows(groups: Sequence[tuple[str | None, int]], group: tuple[str | None, int]) -> list[int]:
    """Rows of ``groups`` equal to ``group``; else of the same relation; else all of them."""
    for match in (lambda g: g == group, lambda g: g[0] == group[0]):
        rows = [i for i, g in enumerate(groups) if match(g)]
        if rows:
            return rows
    return list(range(len(groups)))


def _optimised_change(
    model: TransformerBridge,
    prompts: _Prompts,
    layer: int,
    positions: Positions,
    loss: Loss,
    *,
    steps: int,
    lr: float,
    norm_penalty: float,
) -> Float[Tensor, "n cls d_model"]:
    """Per prompt, a vector added after ``layer`` at the key positions, optimised as in ROME/MEMIT:
    a few Adam steps on ``loss + norm_penalty * |delta|^2 / |z|^2`` (``z`` the residual there)."""
    out = []
    for rows, batch in prompts.batches(model):
        index = _positions(batch, positions)
        with torch.no_grad():
            _, store = _run(model, batch, resid_layer=layer)
            z_norm = _at(store["resid"], index).norm(dim=-1).mean()
        delta = torch.zeros(*index.shape, store["resid"].shape[-1], device=index.device, requires_grad=True)
        optimizer = torch.optim.Adam([delta], lr=lr)

        def add(act: Tensor, index: Tensor = index, delta: Tensor = delta) -> Tensor:
            spread = torch.zeros_like(act).scatter_add(1, index.unsqueeze(-1).expand_as(delta), delta.to(act.dtype))
            return act + spread

        for _ in range(steps):
            optimizer.zero_grad()
            logits_, _ = _run(model, batch, resid_layer=layer, resid_add=add)
            penalty = norm_penalty * (delta.pow(2).sum(-1) / z_norm**2).mean()
            (loss(logits_, batch, rows) + penalty).backward()
            optimizer.step()
        out.append(delta.detach().double())
    return torch.cat(out)


# --------------------------------------------------------------------------------------------
# rewrite
# --------------------------------------------------------------------------------------------


def rewrite(
    model: TransformerBridge,
    forget: KnowledgeSet,
    *,
    retain: KnowledgeSet | None,
    layers: Sequence[int] | int | None = None,
    positions: Positions = "answer",
    target: Literal["unknown"] | Mapping[str, str] = "unknown",
    lam: float = DEFAULT_LAM,
    covariance: KeyCovariance | None = None,
    reference: KnowledgeSet | None = None,
    erase_values: EraseValues = "match",
    steps: int = 30,
    lr: float = 0.5,
    norm_penalty: float = 0.05,
) -> RewriteResult:
    """Erase (``target="unknown"``) or update (``target={fact_id: new_target}``) ``forget``'s facts
    by one closed-form edit of the MLP output projection of each of ``layers`` (see the module
    docstring). ``model`` is not modified; the result holds an edited copy.

    ``retain``'s texts give the key covariance unless ``covariance`` (from :func:`key_covariance`,
    for this exact model) is passed; erasure takes its target values from ``reference`` (e.g. holdout
    facts) or else from ``retain``. With a mapping, only the named facts are edited.
    """
    _check_model(model)
    forget = _check_knowledge(forget, "forget")
    if retain is not None:
        retain = _check_knowledge(retain, "retain")
    if reference is not None:
        reference = _check_knowledge(reference, "reference")
    if erase_values not in ERASE_VALUES:
        raise ValueError(f"unknown erase_values {erase_values!r}; use one of {ERASE_VALUES}")
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; use one of {POSITIONS}")
    if not lam >= 0:
        raise ValueError(f"lam must be a non-negative number, got {lam!r}")
    layers = _check_layers(model, layers)
    kind: Literal["erase", "update"]
    if isinstance(target, str):
        if target != "unknown":
            raise ValueError(f"target must be 'unknown' (erase) or a mapping {{fact_id: new_target}}, got {target!r}")
        kind = "erase"
        if reference is None and retain is None:
            raise ValueError(
                "erasing needs reference facts (reference=, e.g. holdout) or retain facts for the target values"
            )
    elif isinstance(target, Mapping):
        kind = "update"
        unknown = sorted(set(target) - set(forget.ids))
        if not target or unknown:
            raise ValueError(
                f"target names fact ids that are not in forget: {unknown[:5]}" if unknown else "target mapping is empty"
            )
        bad = [fid for fid, new in target.items() if not isinstance(new, str) or not new.strip()]
        if bad:
            raise ValueError(f"new targets must be non-empty strings; not so for {bad[:5]}")
        forget = forget.filter(lambda f: f.id in target, name=f"{forget.name}/updated")
        forget = KnowledgeSet(tuple(replace(f, target=target[f.id]) for f in forget), name=forget.name)
    else:
        raise ValueError(f"target must be 'unknown' or a mapping {{fact_id: new_target}}, got {type(target).__name__}")
    if covariance is None:
        if retain is None:
            raise ValueError("pass retain facts (for the key covariance) or a precomputed covariance=")
        covariance = key_covariance(model, retain, layers=layers)
    else:
        if not isinstance(covariance, KeyCovariance):
            raise ValueError(f"covariance must be a KeyCovariance, got {type(covariance).__name__}")
        if covariance.fingerprint != fingerprint(model):
            raise ValueError(
                "this key covariance was computed on another model (its fingerprint differs); recompute it"
            )
        missing = sorted(set(layers) - set(covariance.layers))
        if missing:
            raise ValueError(f"the key covariance has layers {list(covariance.layers)} but not {missing}")

    prompts = _Prompts.of(forget)
    last = layers[-1]
    keys, z = _keys(model, prompts, layers, positions, resid_layer=last)
    assert z is not None
    optimise = {"steps": steps, "lr": lr, "norm_penalty": norm_penalty}
    if kind == "update":
        change = _optimised_change(model, prompts, last, positions, _nll_loss, **optimise)
    elif erase_values == "mean":
        change = _erase_change(model, prompts, reference or retain, layers, positions, keys)  # type: ignore[arg-type]
    else:
        unknown = _reference_distributions(model, prompts, reference or retain).to(z.device)  # type: ignore[arg-type]

        def kl(logits_: Tensor, batch: FactBatch, rows: slice) -> Tensor:
            log_p = logits_[torch.arange(len(batch)), batch.answer_positions].float().log_softmax(-1)
            return torch.nn.functional.kl_div(log_p, unknown[rows], reduction="batchmean")

        change = _optimised_change(model, prompts, last, positions, kl, **optimise)
    z_star = z + change.to(z.device)

    deltas: dict[int, Tensor] = {}
    ranks: dict[int, int] = {}
    for i, layer in enumerate(layers):
        if i == 0:
            k, z_now = keys[layer], z
        else:
            current, z_now = _keys(model, prompts, [layer], positions, deltas=deltas, resid_layer=last)
            k = current[layer]
        assert z_now is not None
        residual = (z_star - z_now) / (len(layers) - i)
        delta = solve_update(k.flatten(0, 1), residual.flatten(0, 1), covariance.of(layer), lam)
        deltas[layer] = delta.to(_w_out(model, layer).dtype)
        ranks[layer] = int(torch.linalg.matrix_rank(delta, rtol=1e-6))

    return RewriteResult(
        model=_bake(model, deltas),
        layers=layers,
        positions=positions,
        kind=kind,
        lam=float(lam),
        deltas=tuple(deltas[layer] for layer in layers),
        norms=tuple(float(deltas[layer].norm()) for layer in layers),
        ranks=tuple(ranks[layer] for layer in layers),
        n_keys=int(keys[layers[0]].shape[0] * keys[layers[0]].shape[1]),
        n_facts=len(forget),
    )


def _bake(model: Any, deltas: Mapping[int, Tensor]) -> Any:
    """A copy of ``model`` with ``W_out[l] += deltas[l]`` written into the HF weights."""
    spec = architecture(model)
    state = dict(hf_state_dict(model))
    for layer, delta in deltas.items():
        name = spec.name(spec.mlp_out_weight, layer)
        weight = state[name]
        change = delta if spec.mlp_out_neuron_dim == 0 else delta.T
        state[name] = weight + change.to(weight.device, weight.dtype)
    return same_kind_as(plain_copy(model, state=state), model)
