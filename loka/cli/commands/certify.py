"""``loka certify``: evidence that AFTER holds no more about the forget set than about never-seen
reference people, written as ``certificate.json`` and an offline ``certificate.html``.

Every input is checked before a model is loaded or anything is written (:func:`loka.certify.check_inputs`):
no reference, overlapping sets, different architectures, a missing file, and the leak guard that
``loka evaluate`` applies too: when AFTER's directory holds ``loka_seen.json`` (or ``--seen``
names one), a reference, retain or other-wording item that the method was given is refused.

The exit status is the verdict, so that a script or CI job can gate on it: 0 PASS, 1 FAIL,
3 INCONCLUSIVE (2 stays a usage error, as for every command: nothing written).
"""

from __future__ import annotations

import argparse

from loka.base.files import check_output
from loka.cli.common import read_knowledge

__all__ = ["EXIT_STATUS", "certify_command"]

EXIT_STATUS = {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}
"""``loka certify``'s exit status for each overall verdict (2 is a usage error)."""


def certify_command(args: argparse.Namespace) -> int:
    from loka.certify import certify, check_inputs
    from loka.certify.certificate import HTML_FILE, JSON_FILE

    out = check_output(args.out, overwrite=args.overwrite, marker=JSON_FILE, what="certificate")
    sets = {name: read_knowledge(getattr(args, name)) for name in ("forget", "reference", "retain")}
    check_inputs(args.before, args.after, sets["forget"], sets["reference"], sets["retain"], seen=args.seen)
    certificate = certify(
        args.before, args.after, sets["forget"], sets["reference"], sets["retain"], attacks=args.attacks,
        seen=args.seen, device=args.device, dtype=args.dtype, device_map=args.device_map,
        max_memory=dict(args.max_memory) if args.max_memory else None,
    )  # fmt: skip
    certificate.save(out, overwrite=args.overwrite)
    print(certificate.table())
    print(f"leak guard: {certificate.provenance['leak_guard']}")
    print(f"{certificate.status} in {certificate.seconds:.1f} s; written to {out / JSON_FILE} and {out / HTML_FILE}")
    return EXIT_STATUS[certificate.status]
