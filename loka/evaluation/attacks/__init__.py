"""The evaluation's attacks, one file per family: ``membership`` (LOSS, zlib, Min-K%, Min-K%++),
``extraction`` (verbatim continuation), ``relearning`` (a small fine-tune), ``quantization`` (8 and
4 bits), ``logit_lens`` (the answer read from every layer) and ``probe`` (a linear read-out)."""
