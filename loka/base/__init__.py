"""The base room: small pieces every other room uses and that use nothing of loka's.

``errors`` (:class:`UsageError`, the one exception for a user's mistake), ``checks`` (number checks
with one wording of their errors), ``files`` (the output-directory guard and the JSON fallback every
writer uses), ``distributed`` (data parallel under ``torch.distributed``: which rows a rank runs,
exact sums and gathers in rank order) and ``components`` (component addresses
``("neuron" | "head", layer, index)`` and their labels).
"""
