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

Keys are read at ``positions``: ``"last"`` (the last prompt token, where the answer is
predicted), ``"subject"`` (the subject's last token) or ``"both"``, on each forget prompt and on
its paraphrase prompts. The covariance is per model, not per request; compute it once with
:func:`key_covariance` and save it::

    cov = key_covariance(model, retain, layers=[3])
    cov.save("cov.safetensors")                              # + cov.json, readable
    result = rewrite(model, forget, retain=None, covariance=KeyCovariance.load("cov.safetensors"),
                     reference=holdout)
    result.model                                             # the edited copy (bridge)
    with result.hooks(model): ...                            # the same edit, as TL hooks

The edit is baked by adding ``Delta`` to the HF weight (GPT-2's ``Conv1D`` stores ``[d_mlp,
d_model]``, NeoX's ``dense_4h_to_h`` and Llama's ``down_proj`` store ``[d_model, d_mlp]``).

This module holds the solve and the entry point; the pieces are :mod:`ablation.rewrite_keys`
(reading keys, the edit as hooks), :mod:`ablation.covariance` (the key covariance) and
:mod:`ablation.rewrite_targets` (what the forget keys should map to).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from ablation.covariance import KeyCovariance, key_covariance
from ablation.rewrite_keys import (
    POSITIONS,
    HookList,
    Positions,
    check_layers,
    check_model,
    edit_hooks,
    post_hook,
    read_keys,
    w_out,
)
from ablation.rewrite_targets import erase_change, nll_loss, optimised_change
from loka.base.errors import UsageError
from loka.data.checks import check_knowledge
from loka.data.encoding import FactBatch
from loka.data.knowledge import KnowledgeSet, Prompts
from loka.models import architecture, fingerprint, hf_state_dict, plain_copy, same_kind_as
from loka.models.recording import record
from loka.models.weights import weight_values
from loka.scoring.objectives import unknown_loss
from loka.scoring.unknown import prompt_distributions

__all__ = [
    "POSITIONS",
    "KeyCovariance",
    "Positions",
    "RewriteResult",
    "key_covariance",
    "rewrite",
    "solve_update",
]

EraseValues = Literal["match", "mean"]
ERASE_VALUES: tuple[EraseValues, ...] = get_args(EraseValues)
DEFAULT_LAM = 1.0
"""Weight of the retain-covariance penalty (per-key averages on both sides; see the bench)."""


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
        return [record(store, post_hook(layer), detach=False) for layer in self.layers] + edit_hooks(deltas, store)

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


def rewrite(
    model: TransformerBridge,
    forget: KnowledgeSet,
    *,
    retain: KnowledgeSet | None,
    layers: Sequence[int] | int | None = None,
    positions: Positions = "last",
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
    check_model(model)
    forget = check_knowledge(forget, "forget")
    if retain is not None:
        retain = check_knowledge(retain, "retain")
    if reference is not None:
        reference = check_knowledge(reference, "reference")
    if erase_values not in ERASE_VALUES:
        raise UsageError(f"unknown erase_values {erase_values!r}; use one of {ERASE_VALUES}")
    if positions not in POSITIONS:
        raise UsageError(f"unknown positions {positions!r}; use one of {POSITIONS}")
    if not lam >= 0:
        raise UsageError(f"lam must be a non-negative number, got {lam!r}")
    layers = check_layers(model, layers)
    kind: Literal["erase", "update"]
    if isinstance(target, str):
        if target != "unknown":
            raise UsageError(f"target must be 'unknown' (erase) or a mapping {{fact_id: new_target}}, got {target!r}")
        kind = "erase"
        if reference is None and retain is None:
            raise UsageError(
                "erasing needs reference facts (reference=, e.g. holdout) or retain facts for the target values"
            )
    elif isinstance(target, Mapping):
        kind = "update"
        unknown = sorted(set(target) - set(forget.ids))
        if not target or unknown:
            raise UsageError(
                f"target names fact ids that are not in forget: {unknown[:5]}" if unknown else "target mapping is empty"
            )
        bad = [fid for fid, new in target.items() if not isinstance(new, str) or not new.strip()]
        if bad:
            raise UsageError(f"new targets must be non-empty strings; not so for {bad[:5]}")
        forget = forget.filter(lambda f: f.id in target, name=f"{forget.name}/updated")
        forget = KnowledgeSet(tuple(replace(f, target=target[f.id]) for f in forget), name=forget.name)
    else:
        raise UsageError(f"target must be 'unknown' or a mapping {{fact_id: new_target}}, got {type(target).__name__}")
    if covariance is None:
        if retain is None:
            raise UsageError("pass retain facts (for the key covariance) or a precomputed covariance=")
        covariance = key_covariance(model, retain, layers=layers)
    else:
        if not isinstance(covariance, KeyCovariance):
            raise UsageError(f"covariance must be a KeyCovariance, got {type(covariance).__name__}")
        if covariance.fingerprint != fingerprint(model):
            raise UsageError(
                "this key covariance was computed on another model (its fingerprint differs); recompute it"
            )
        missing = sorted(set(layers) - set(covariance.layers))
        if missing:
            raise UsageError(f"the key covariance has layers {list(covariance.layers)} but not {missing}")

    prompts = Prompts.of(forget)
    last = layers[-1]
    keys, z = read_keys(model, prompts, layers, positions, resid_layer=last)
    assert z is not None
    optimise = {"steps": steps, "lr": lr, "norm_penalty": norm_penalty}
    if kind == "update":
        change = optimised_change(model, prompts, last, positions, nll_loss, **optimise)
    elif erase_values == "mean":
        change = erase_change(model, prompts, reference or retain, layers, positions, keys)  # type: ignore[arg-type]
    else:
        unknown = prompt_distributions(model, prompts, reference or retain).to(z.device)  # type: ignore[arg-type]

        def kl(logits_: Tensor, batch: FactBatch, rows: slice) -> Tensor:
            return unknown_loss(batch.target_log_softmax(logits_)[:, 0], unknown[rows])

        change = optimised_change(model, prompts, last, positions, kl, **optimise)
    z_star = z + change.to(z.device)

    deltas: dict[int, Tensor] = {}
    ranks: dict[int, int] = {}
    for i, layer in enumerate(layers):
        if i == 0:
            k, z_now = keys[layer], z
        else:
            current, z_now = read_keys(model, prompts, [layer], positions, deltas=deltas, resid_layer=last)
            k = current[layer]
        assert z_now is not None
        residual = (z_star - z_now) / (len(layers) - i)
        delta = solve_update(k.flatten(0, 1), residual.flatten(0, 1), covariance.of(layer), lam)
        deltas[layer] = delta.to(w_out(model, layer).dtype)
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
        weight = weight_values(model, [name])[name]  # a weight a device_map offloads: its value
        change = delta if spec.mlp_out_neuron_dim == 0 else delta.T
        state[name] = weight + change.to(weight.device, weight.dtype)
    return same_kind_as(plain_copy(model, state=state), model)
