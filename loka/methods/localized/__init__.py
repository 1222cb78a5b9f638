"""LOKA, localized knowledge ablation: where it edits (``localization``), its options (``config``),
the losses it trains on (:mod:`loka.methods.terms`, :mod:`loka.scoring.objectives`), what it adds to
erase rather than suppress (``erasure``, ``repair``), the masked fine-tune (``finetune``), the
closed-form rewrite (``rewrite``) and the driver that runs them (``driver``)."""
