"""Unlearning methods behind one interface: ``unlearn(model, forget, retain, method=...)``.

Every method returns an edited **copy** (the input model is untouched) in an
:class:`UnlearningResult`, with its configuration, a per-check log and its compute, so that the
shared evaluation (:func:`loka.evaluate`) can compare them on equal terms. Each method's options
are a frozen config checked when it is built (:mod:`loka.methods.config`; each method's config
beside its runner: :class:`LokaConfig`,
:class:`GradientAscentConfig`, :class:`TaskVectorConfig`, :class:`RetrainConfig`); keywords to
:func:`unlearn` are sugar for it, and ``result.config`` records it.

**One budget for all** (:class:`Budget`): every method checks forget accuracy on the forget prompts
it was given every ``check_every`` optimizer steps and stops at the first check where it is at most
``target_forget_accuracy``, or after ``max_steps`` steps. Hyper-parameters that a method chooses
itself (task vector's scale, LOKA's rewrite strength) are chosen on ``validation`` (retain people
the method does not train on), never on what the evaluation scores. Every result reports its
:class:`Compute`: optimizer steps, tokens through forward passes, tokens through forward passes
that built a graph (i.e. were back-propagated), and wall seconds.

- ``"gradient_ascent"``: each step pairs a forget batch and a retain batch and minimises
  ``alpha * (-loss_forget) + (1 - alpha) * loss_retain`` with AdamW over all weights (ascent on
  what to forget, descent on what to keep; the literature also calls this "gradient difference").
- ``"task_vector"``: fine-tune a copy on the forget facts (``finetune_steps`` steps, default 60
  or the budget's ``max_steps`` if smaller), take the task vector ``tau = theta_finetuned - theta`` and return
  ``theta - scale * tau`` (Ilharco et al. 2023) for the smallest scale on the grid that reaches the
  forget target (one check per scale); if none does, the scale with the best validation-retain
  minus forget margin.
- ``"loka"``: localized knowledge ablation. *Locate* (:mod:`loka.localization`): attribution
  patching (gradient x activation, noise on the subject tokens, or on the whole prompt of a fact
  that names no subject; denoising) scores every MLP neuron (``components="neurons"``, or
  ``"heads"`` / ``"all"``) on the forget facts and on the retain facts; the ``size`` components
  (a fraction of the pool, default 5%, a count, or ``"auto"``: the smallest size on ``sizes``
  that reaches the forget target with validation retain at least ``retain_floor`` x the
  original's) with the largest forget-minus-retain contrast are located (``localize``: where
  attribution reads them: ``"all"`` tokens, ``"output"`` = the last prompt token, ``"lookup"`` =
  the subject tokens, ``"exact"`` = activation patching of the best candidates). *Edit*
  (``edit="finetune"``, the default): only the parameters those components own are trained (a
  neuron's ``W_in`` column, ``b_in`` entry and ``W_out`` row; a head's ``W_Q``/``W_K``/``W_V``
  slices and ``W_O`` rows; :func:`ablation.edit`: every other parameter is bit-identical), on
  :mod:`loka.objectives`: with ``reference`` facts about people the model never saw, the forget
  prompts should give the model's answer distribution for unknown people (plus NPO on any further
  answer tokens); without, NPO on every answer token; and ``retain_weight`` x KL to the
  original on every answer token of the retain facts. ``edit="ablate"`` instead zeroes
  (``ablate_mode="zero"``: only their output weights change) or mean-ablates (``"mean"``, the
  default: the layer's shared output bias also takes their mean contribution) the located
  components, baked into the weights; no training. ``location`` runs the same edit
  elsewhere, the controls that test whether the location matters (``"random"``, ``"least"``,
  ``"complement"``, ``"layers"``, ``"full"``). ``edit="rewrite"`` is the closed-form,
  retain-covariance-constrained rewrite of whole MLP output projections
  (:func:`ablation.rewrite`), searched over layer sets and ``lam``. The result carries the mask,
  and its config the number and share of parameters changed.
  Erasure options (:mod:`loka.erasure`), on the located components only: ``erase="subject"``
  (names too: whole forget texts as likely as strangers'), ``reinit`` (shrink-perturb and
  repair by distillation: a localized UNDO) and ``adversary_weight`` (the forget loss also at
  adversarially fine-tuned weights, first order).
- ``"npo"``: Negative Preference Optimization (Zhang et al. 2024) over all weights, with NLL on
  the retain answers (open-unlearning's NPO; :class:`NPOConfig`).
- ``"rmu"``: Representation Misdirection for Unlearning (Li et al. 2024, WMDP; :mod:`loka.rmu`):
  steer one block's residual stream on forget text to a scaled random direction, hold it on
  retain text, train a few blocks' MLP output weights; layer and coefficient chosen on
  validation.
- ``"retrain"``: the exact-retrain oracle (pass ``oracle=`` a model directory, e.g. the testbed's
  ``oracle_dir``), so that the gold standard sits in every comparison table.

Gradient ascent's and task vector's losses are next-token losses over the fact's whole text
(BOS + prompt + target), as in the common baselines (Maini et al. 2024, TOFU).

Layout: :mod:`~loka.methods.registry` (``unlearn``, the names and their configs),
:mod:`~loka.methods.budget`, :mod:`~loka.methods.result`, :mod:`~loka.methods.training` and
:mod:`~loka.methods.batches` (the shared loop), one file per baseline (``gradient_ascent``, ``npo``,
``task_vector``, ``rmu``, ``retrain``) and :mod:`loka.methods.localized` for LOKA.
"""

from __future__ import annotations

from loka.methods.budget import Budget, Compute
from loka.methods.config import MethodConfig
from loka.methods.gradient_ascent import GradientAscentConfig
from loka.methods.localized.config import SIZES, LokaConfig
from loka.methods.npo import NPOConfig
from loka.methods.registry import CONFIGS, METHODS, Method, method_config, unlearn
from loka.methods.result import UnlearningResult
from loka.methods.retrain import RetrainConfig
from loka.methods.rmu import RMUConfig
from loka.methods.task_vector import TaskVectorConfig

__all__ = [
    "CONFIGS",
    "METHODS",
    "SIZES",
    "Budget",
    "Compute",
    "GradientAscentConfig",
    "LokaConfig",
    "Method",
    "MethodConfig",
    "NPOConfig",
    "RMUConfig",
    "RetrainConfig",
    "TaskVectorConfig",
    "UnlearningResult",
    "method_config",
    "unlearn",
]
