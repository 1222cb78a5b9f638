"""ablation: turn chosen components off or edit them, reversibly (hooks) or permanently (weights).

The question this package answers is *turn these components off (or change them)*; which
components matter is attribution's question, and ablation never scores a model itself.

* :class:`AblationMask` (``mask.py``): which neurons ``[n_layers, d_mlp]`` and heads
  ``[n_layers, n_heads]`` are ablated, and how (``zero``, ``mean``, ``scale``, ``resample``);
  built from attribution scores, from component addresses, or at random as a control; saved as
  readable JSON with the values in safetensors beside it (``mask_file.py``; the names both share
  are in ``mask_schema.py``).
* :func:`ablate` (``hooks.py``): ``with ablate(model, mask):`` applies the mask through
  TransformerLens hooks on ``hook_post`` / ``hook_z``; on exit the model is exactly as before.
  :func:`mean_activations` computes the means for ``mean`` masks.
* :func:`bake` (``bake.py``): an edited copy whose weights implement the mask (output weights
  zeroed or scaled, means folded into output biases); same logits as the hooked model.
* :func:`edit` (``edit.py``): fine-tune only the masked components' own weights of a copy,
  with a caller-supplied objective; everything else stays bit-identical.
* :func:`rewrite` (``rewrite.py``; keys in ``rewrite_keys.py``, the constraint in ``covariance.py``,
  the targets in ``rewrite_targets.py``): a closed-form, covariance-constrained edit of MLP output
  projections (ROME / MEMIT) that erases or updates facts.
* :func:`random_edit_like` (``control.py``): the random control of a weight edit, the same
  singular values per changed tensor along random directions.
* :func:`export_checkpoint` (``export.py``): write an edited model as a plain Hugging Face
  directory plus ``loka_edit.json``, atomically.

Typical use::

    mask = AblationMask.from_scores(scores, k=100, kind="neurons")
    with ablate(model, mask):
        ...                                  # study the ablated model
    edited = bake(model, mask)               # or edit(model, mask, objective)
    export_checkpoint(edited, "out/model-without-x", mask=mask, method="bake")
"""

from ablation.bake import bake
from ablation.control import random_edit_like
from ablation.edit import edit
from ablation.export import export_checkpoint
from ablation.hooks import ablate, mean_activations
from ablation.mask import BAKEABLE_MODES, MODES, AblationMask, MeanActivations
from ablation.rewrite import KeyCovariance, RewriteResult, key_covariance, rewrite

__all__ = [
    "AblationMask",
    "BAKEABLE_MODES",
    "KeyCovariance",
    "MODES",
    "MeanActivations",
    "RewriteResult",
    "ablate",
    "bake",
    "edit",
    "export_checkpoint",
    "key_covariance",
    "mean_activations",
    "random_edit_like",
    "rewrite",
]
