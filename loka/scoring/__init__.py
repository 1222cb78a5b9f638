"""What a model says about facts: per-fact scores (``metrics``), what it says about people it never
saw (``unknown``), and the losses an edit minimises (``objectives``). Below the tools: attribution,
ablation, the methods and the evaluation all score the same way."""
