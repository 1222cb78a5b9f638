"""The certificate's own calibration: how often each check agreed with the oracle-based evaluation
where an oracle exists (the default testbed), as ``bench/certify_calibration.py`` measured it and
wrote it to ``calibration.json`` beside this module. The certificate's HTML shows it per check;
it describes the checks on that testbed, not the model being certified."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["CALIBRATION_FILE", "calibration", "describe"]

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")


@cache
def calibration() -> dict[str, Any] | None:
    """The shipped calibration (None when the file is missing or unreadable)."""
    try:
        data = json.loads(CALIBRATION_FILE.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("checks"), dict) else None


def describe(check: str) -> str:
    """One cell: the check's agreement with the oracle and its false-PASS rate on the testbed
    ("" when it was not calibrated)."""
    data = calibration()
    if data is None or check not in data["checks"]:
        return ""
    c = data["checks"][check]
    false_pass = "" if c.get("false_pass_rate") is None else f", false PASS {c['false_pass_rate']:.0%}"
    return f"{c['agreement']:.0%} of {c['n']}{false_pass}"
