"""How often ``loka certify`` agrees with the oracle: the certificate's own calibration (issue 24).

    python bench/certify_calibration.py --worlds 0 1 --seeds 0 [--cache DIR] [--out FILE] [--write-package]

On the default testbed (each world has its original and its exact-retrain oracle), for each run
seed: the AFTER models are the original (AFTER = BEFORE), the oracle, every method of
``loka.METHODS`` at its defaults (the exact retrain is the oracle, so it is the oracle row) and
LOKA's erase variants, under the testbed protocol (a method is given forget, retain_train,
retain_validation and the protocol's reference people), an **output-only suppression** and a
**loss-matching** fine-tune that games the LOSS attack (:mod:`loka.certify.adversaries`). Each is
certified (full suite, suite seed = run seed) against the protocol's MIA non-members (people no
method was given) with retain_eval, and evaluated with ``loka.evaluate`` against the oracle.

**The oracle-based verdict** of a check on a model reads the evaluation column that measures the
same thing on the same forget facts, model against oracle (:data:`COLUMNS`): FAIL when the model
sits beyond the check's margin (the suite's fixed margin, in the check's tested direction(s))
from the oracle; "knowledge remains" when it sits beyond it on the member side (more answers,
a higher AUC). A check with no evaluation column is read the same way from the certificate's own
statistic on the oracle model (marked ``oracle certificate``). The overall oracle-based verdict is
FAIL when any counted check's is. **Agreement**: the certificate's verdict equals it
(INCONCLUSIVE never agrees); **false PASS**: the certificate PASSes where knowledge remains.

Trained models and evaluations are cached under ``--cache`` (default ~/.cache/loka/certify-calibration),
so a rerun re-certifies only. ``--write-package`` writes the summary to
``loka/certify/calibration.json``, which the certificate's HTML reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import loka  # noqa: E402
from ablation import export_checkpoint  # noqa: E402
from loka.certify import Certificate, certify, suite  # noqa: E402
from loka.certify.adversaries import match_reference_loss, suppress  # noqa: E402
from loka.certify.certificate import JSON_FILE  # noqa: E402
from loka.certify.result import Check  # noqa: E402
from loka.certify.statistics import decide, p_value, test_scale  # noqa: E402
from loka.data import KnowledgeSet  # noqa: E402
from loka.models import load_model  # noqa: E402
from loka.protocol import SEEN_FILE, Protocol, Seen  # noqa: E402
from loka.testbed.planted import new_people  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_SEED = 777  # draws the --extra-reference people (never the planted testbed's seeds 0-2)
PACKAGE_FILE = ROOT / "loka" / "certify" / "calibration.json"
# row name -> (method, options); "retrain" is the oracle itself
METHOD_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "loka": ("loka", {}),
    "loka erase=answer": ("loka", {"erase": "answer"}),
    "loka erase=subject": ("loka", {"erase": "subject"}),
    "gradient_ascent": ("gradient_ascent", {}),
    "npo": ("npo", {}),
    "rmu": ("rmu", {}),
    "task_vector": ("task_vector", {}),
}
# certify check -> the evaluation column measuring the same thing on the same forget facts
COLUMNS: dict[str, str] = {
    "direct.answers": "forget_accuracy",
    "direct.other_wordings": "unseen_wording_forget_accuracy",  # the testbed's forget paraphrases: the held-out wording
    "membership.loss": "mia_aucs.loss",
    "membership.zlib": "mia_aucs.zlib",
    "membership.min_k": "mia_aucs.min_k",
    "relearning.forget_half": "relearning.after",
    "quantization.8bit.answers": "quantization.8bit.forget_accuracy",
    "quantization.4bit.answers": "quantization.4bit.forget_accuracy",
    "readout.logit_lens": "logit_lens.best intermediate block",
    "readout.probe": "probe.forget_accuracy",
    "collateral.retain": "retain_accuracy",
}


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("=", "-")


def _columns(ev: Any) -> dict[str, float | None]:
    """The evaluation's numbers that :data:`COLUMNS` names."""
    out: dict[str, float | None] = {
        "forget_accuracy": ev.forget_accuracy,
        "paraphrase_forget_accuracy": ev.paraphrase_forget_accuracy,
        "unseen_wording_forget_accuracy": ev.unseen_wording_forget_accuracy,
        "retain_accuracy": ev.retain_accuracy,
        "relearning.after": None if ev.relearning is None else ev.relearning.after,
        "probe.forget_accuracy": None if ev.probe is None else ev.probe.forget_accuracy,
        "logit_lens.best intermediate block": None if ev.logit_lens is None else max(ev.logit_lens.per_layer[:-1]),
    }
    for attack, value in ev.mia_aucs.items():
        out[f"mia_aucs.{attack}"] = value
    if ev.quantization is not None:
        for point in ev.quantization.points:
            out[f"quantization.{point.bits}bit.forget_accuracy"] = point.forget_accuracy
    return out


def build_models(world: int, seed: int, tb: Any, protocol: Protocol, cache: Path) -> dict[str, Path]:
    """Every AFTER model of one run, as a directory (trained once, then read from the cache)."""
    root = cache / f"world-{world}" / f"seed-{seed}"
    models: dict[str, Path] = {"original": tb.model_dir, "oracle": tb.oracle_dir}
    base = None
    for name, (method, options) in METHOD_ROWS.items():
        out = root / _slug(name)
        if not (out / "config.json").is_file():
            base = base or load_model(tb.model_dir)
            start = time.perf_counter()
            result = loka.unlearn(
                base, protocol.forget, protocol.retain_train, method=method, validation=protocol.retain_validation,
                reference=protocol.reference, augment=protocol.augment, seed=seed, progress=False, **options,
            )  # fmt: skip
            export_checkpoint(result.model, out, source=tb.model_dir, method=method, settings=result.config,
                              overwrite=True, documents={SEEN_FILE: result.seen.to_dict()})  # fmt: skip
            print(f"  {name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
        models[name] = out
    adversaries = {
        "suppression": (
            lambda m: suppress(m, m.tokenizer, protocol.forget, protocol.retain_train, seed=seed),
            Seen.of(protocol.forget, protocol.retain_train),
        ),
        "loss matching": (
            lambda m: match_reference_loss(
                m, m.tokenizer, protocol.forget, protocol.reference, protocol.retain_train, seed=seed
            ),  # fmt: skip
            Seen.of(protocol.forget, protocol.reference, protocol.retain_train),
        ),
    }
    for name, (build, seen) in adversaries.items():
        out = root / _slug(name)
        if not (out / "config.json").is_file():
            base = base or load_model(tb.model_dir)
            start = time.perf_counter()
            edited = build(base)
            export_checkpoint(edited, out, source=tb.model_dir, method=_slug(name), overwrite=True,
                              documents={SEEN_FILE: seen.to_dict()})  # fmt: skip
            print(f"  {name}: built in {time.perf_counter() - start:.0f} s", flush=True)
        models[name] = out
    return models


def evaluations(world: int, seed: int, models: dict[str, Path], protocol: Protocol, cache: Path) -> dict[str, dict]:
    """``loka.evaluate`` of each model and of the oracle (their :data:`COLUMNS` numbers), cached."""
    path = cache / f"world-{world}" / f"seed-{seed}" / "evaluations.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    for name, directory in models.items():
        if name in done:
            continue
        start = time.perf_counter()
        ev = loka.evaluate(str(directory), protocol=protocol, seed=seed, label=name)
        done[name] = _columns(ev)
        print(f"  evaluate {name}: {time.perf_counter() - start:.0f} s", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(done, indent=1))
    return done


def oracle_verdict(check: dict, model_value: float | None, oracle_value: float | None, margin: float) -> tuple:
    """(verdict, knowledge remains) of one check from a model's and the oracle's value."""
    if model_value is None or oracle_value is None:
        return None, None
    if check["name"] == "collateral.retain":  # retain accuracy lost against the oracle's
        lost = oracle_value - model_value
        return ("FAIL" if lost > margin else "PASS"), False
    d = model_value - oracle_value
    remains = d > margin
    beyond = remains if check["sided"] == "greater" else abs(d) > margin
    return ("FAIL" if beyond else "PASS"), remains


def judge(cert: Certificate, oracle_cert: Certificate, ev: dict, oracle_ev: dict) -> list[dict]:
    """Per measured check (held-out or dev): the certificate's verdict and the oracle-based one."""
    rows = []
    for c in cert.checks:
        if c.skipped is not None or c.name == "membership.ratio_to_before":  # information by design
            continue
        check = {"name": c.name, "sided": c.sided}
        column = COLUMNS.get(c.name)
        if column is not None and ev.get(column) is not None and oracle_ev.get(column) is not None:
            m, o, source = ev.get(column), oracle_ev.get(column), f"evaluate: {column}"
        else:
            other = oracle_cert.check(c.name)
            m, o, source = c.observed, other.observed, "oracle certificate: same statistic on the oracle"
        margin = cert.suite.margin_collateral if c.name == "collateral.retain" else _base_margin(cert, c)
        verdict, remains = oracle_verdict(check, m, o, margin)
        rows.append({
            "check": c.name, "role": c.role, "verdict": c.verdict, "oracle_verdict": verdict, "remains": remains,
            "model_value": m, "oracle_value": o, "source": source, "uninformative": "uninformative" in c.note,
        })  # fmt: skip
    return rows


def _base_margin(cert: Certificate, c: Any) -> float:
    s = cert.suite
    if c.statistic == "auc":
        return s.margin_auc
    if c.name.startswith("relearning."):
        return s.margin_relearning
    return s.margin_accuracy


def summarise(runs: list[dict]) -> dict[str, Any]:
    """Per check and overall: agreement with the oracle-based verdict, false-PASS and INCONCLUSIVE rates."""
    per_check: dict[str, dict[str, Any]] = {}
    for run in runs:
        for row in run["checks"]:
            if row["oracle_verdict"] is None or row["role"] == "info":
                continue
            s = per_check.setdefault(row["check"], {"n": 0, "agree": 0, "remains": 0, "false_pass": 0,
                                                     "inconclusive": 0, "source": row["source"]})  # fmt: skip
            s["n"] += 1
            s["agree"] += row["verdict"] == row["oracle_verdict"]
            s["inconclusive"] += row["verdict"] == "INCONCLUSIVE"
            s["remains"] += bool(row["remains"])
            s["false_pass"] += bool(row["remains"]) and row["verdict"] == "PASS"
    checks = {
        name: {
            "agreement": s["agree"] / s["n"],
            "false_pass_rate": s["false_pass"] / s["remains"] if s["remains"] else None,
            "inconclusive_rate": s["inconclusive"] / s["n"], "n": s["n"], "n_knowledge_remains": s["remains"],
            "oracle_based_on": s["source"],
        }
        for name, s in sorted(per_check.items())
    }  # fmt: skip
    n = len(runs)
    agree = sum(r["status"] == r["oracle_status"] for r in runs)
    remains = [r for r in runs if r["remains"]]
    pairs = [row for r in runs for row in r["checks"] if row["oracle_verdict"] is not None and row["role"] != "info"]
    models: dict[str, dict[str, int]] = {}
    for r in runs:
        models.setdefault(r["model"], {"PASS": 0, "FAIL": 0, "INCONCLUSIVE": 0, "oracle_based_FAIL": 0})
        models[r["model"]][r["status"]] += 1
        models[r["model"]]["oracle_based_FAIL"] += r["oracle_status"] == "FAIL"
    return {
        "checks": checks,
        "overall": {
            "agreement": agree / n if n else None,
            "false_pass_rate": sum(r["status"] == "PASS" for r in remains) / len(remains) if remains else None,
            "n": n,
            "n_knowledge_remains": len(remains),
            "pair_agreement": sum(p["verdict"] == p["oracle_verdict"] for p in pairs) / len(pairs) if pairs else None,
            "n_pairs": len(pairs),
        },
        "models": models,
    }


def rejudge(cert: Certificate) -> Certificate:
    """A saved certificate's verdicts again, from its saved numbers, under this library's p-value
    scale and verdict rules (which BEFORE-sensitivity roles it holds are kept as saved)."""
    checks = []
    for c in cert.checks:
        if c.skipped is None and c.null is not None and c.interval is not None and c.test == Check.test:
            scale = test_scale(c.null, c.n_forget, c.n_reference, c.interval, cert.suite.confidence)
            c = c.with_(p_value=p_value(c.observed, c.null, c.sided, scale=scale))
        checks.append(c)
    return dataclasses.replace(cert, checks=tuple(decide(checks, alpha=cert.suite.alpha)))


EXTRA_ROWS = ("original", "oracle", "suppression", "loss matching")


def certify_all(
    tb: Any,
    protocol: Protocol,
    models: dict[str, Path],
    evs: dict,
    world: int,
    seed: int,
    suite_seed: int,
    cache: Path,
    reuse: bool,
    reference: Any,
    tag: str = "",
) -> list[dict]:
    """Certify every model of one run (the oracle first: its certificate is the fallback truth)."""
    runs, certs = [], {}
    for name in ["oracle", *(n for n in models if n != "oracle")]:
        saved = cache / f"world-{world}" / f"seed-{seed}" / f"certificates{tag}" / f"suite-{suite_seed}" / _slug(name)
        if reuse and (saved / JSON_FILE).is_file():
            certs[name] = rejudge(Certificate.from_dict(json.loads((saved / JSON_FILE).read_text())))
        else:
            certs[name] = certify(tb.model_dir, models[name], tb.forget, reference, protocol.retain_eval,
                                  suite=suite("full", seed=suite_seed), salt="calibration")  # fmt: skip
            certs[name].save(saved, overwrite=True)
        cert = certs[name]
        wall = cert.seconds
        rows = judge(cert, certs["oracle"], evs[name], evs["oracle"])
        counted = [r for r in rows if r["role"] == "held-out"]
        oracle_status = "FAIL" if any(r["oracle_verdict"] == "FAIL" for r in counted) else "PASS"
        runs.append({
            "world": world, "seed": seed, "suite_seed": suite_seed, "model": name, "status": cert.status,
            "reference": reference.name,
            "oracle_status": oracle_status, "remains": any(r["remains"] for r in counted), "seconds": wall,
            "checks": rows,
        })  # fmt: skip
        verdicts = " ".join(f"{r['check']}={(r['verdict'] or '-')[0]}/{(r['oracle_verdict'] or '-')[0]}" for r in rows)
        print(f"  {name:<20} {cert.status:<13} oracle-based {oracle_status:<5} {wall:5.0f} s  {verdicts}", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--models", nargs="*", default=None, help="only these rows (default: all)")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "loka" / "certify-calibration"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "certify_calibration.json"))
    parser.add_argument("--write-package", action="store_true", help=f"also write {PACKAGE_FILE.relative_to(ROOT)}")
    parser.add_argument("--no-certify", action="store_true", help="only train and evaluate (fill the cache)")
    parser.add_argument(
        "--suite-seeds",
        type=int,
        nargs="+",
        default=[0],
        help=f"certify seeds (the first for every row, the others for {', '.join(EXTRA_ROWS)} only)",
    )
    parser.add_argument("--reuse", action="store_true", help="read certificates saved by an earlier run (re-judge)")
    parser.add_argument(
        "--extra-reference", type=int, default=0, metavar="N",
        help="add N people the world generator makes up (nobody trained on them) to the reference (default 0)",
    )  # fmt: skip
    parser.add_argument("--merge", nargs="*", default=[], help="also read the runs of these earlier --out files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = Path(args.cache)
    runs: list[dict] = []
    for world in args.worlds:
        tb = loka.testbed.load("default", seed=world, progress=False)
        protocol = Protocol.from_testbed(tb)
        reference, tag = protocol.nonmembers, ""
        if args.extra_reference:
            strangers = new_people(tb.world, args.extra_reference, seed=REFERENCE_SEED)
            extra = tb.world.facts_of(strangers, name="never-seen people")
            reference = KnowledgeSet(
                reference.facts + extra.facts, name=f"nonmembers + {args.extra_reference} never-seen people"
            )
            tag = f"-extra{args.extra_reference}"
        for seed in args.seeds:
            print(f"world {world}, seed {seed}", flush=True)
            models = build_models(world, seed, tb, protocol, cache)
            if args.models:
                models = {k: v for k, v in models.items() if k in args.models or k == "oracle"}
            evs = evaluations(world, seed, models, protocol, cache)
            if args.no_certify:
                continue
            for suite_seed in args.suite_seeds:
                rows_now = models if suite_seed == args.suite_seeds[0] else {
                    k: v for k, v in models.items() if k in EXTRA_ROWS
                }  # fmt: skip
                runs += certify_all(
                    tb, protocol, rows_now, evs, world, seed, suite_seed, cache, args.reuse, reference, tag
                )  # fmt: skip
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps({"runs": runs}, indent=1))  # so far (summarised below)
    if args.no_certify:
        return
    for path in args.merge:
        runs += json.loads(Path(path).read_text())["runs"]
    runs = once_per_model(runs)
    summary = summarise(runs)
    summary["setup"] = {
        "testbed": "default", "worlds": sorted({r["world"] for r in runs}), "seeds": sorted({r["seed"] for r in runs}),
        "suite": "full",
        "suite_seeds": sorted({r["suite_seed"] for r in runs}),
        "reference": sorted({r.get("reference", "nonmembers") for r in runs}),
        "certify_seconds": {
            "mean": sum(r["seconds"] for r in runs) / len(runs),
            "max": max(r["seconds"] for r in runs),
        },
        "command": "python bench/certify_calibration.py " + " ".join(sys.argv[1:]),
    }  # fmt: skip
    print(format_table(summary))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    disagreements = [
        {k: r[k] for k in ("world", "seed", "suite_seed", "model")} | {k: row[k] for k in
         ("check", "role", "verdict", "oracle_verdict", "model_value", "oracle_value", "source")}
        for r in runs for row in r["checks"]
        if row["oracle_verdict"] is not None and row["role"] != "info" and row["verdict"] != row["oracle_verdict"]
    ]  # fmt: skip
    for d in disagreements:
        print(f"disagreement: world {d['world']} {d['model']:<20} {d['check']:<30} certify {d['verdict']:<13} "
              f"oracle-based {d['oracle_verdict']} ({d['model_value']} vs oracle {d['oracle_value']})")  # fmt: skip
    out.write_text(json.dumps({**summary, "disagreements": disagreements, "runs": runs}, indent=1))
    if args.write_package:
        PACKAGE_FILE.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"written to {out}" + (f" and {PACKAGE_FILE}" if args.write_package else ""))


SEED_FREE = ("original", "oracle")  # the same model whatever the method seed


def once_per_model(runs: list[dict]) -> list[dict]:
    """Drop repeats of a certificate: the original and the oracle do not depend on the method seed,
    so runs of two method seeds with the same suite seed certify the same model the same way."""
    seen, kept = set(), []
    for r in runs:
        key = (r["world"], r["suite_seed"], r["model"], r.get("reference", "nonmembers"))
        if r["model"] in SEED_FREE and key in seen:
            continue
        seen.add(key)
        kept.append(r)
    return kept


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'check':<30}{'agree':>7}{'false PASS':>12}{'INCONCL.':>10}{'n':>5}  oracle-based on"]
    for name, s in summary["checks"].items():
        fp = "-" if s["false_pass_rate"] is None else f"{s['false_pass_rate']:.2f} ({s['n_knowledge_remains']})"
        lines.append(f"{name:<30}{s['agreement']:>7.2f}{fp:>12}{s['inconclusive_rate']:>10.2f}{s['n']:>5}  "
                     f"{s['oracle_based_on']}")  # fmt: skip
    o = summary["overall"]
    fp = "-" if o["false_pass_rate"] is None else f"{o['false_pass_rate']:.2f}"
    lines.append(f"{'overall (held-out)':<30}{o['agreement']:>7.2f}{fp:>12}{'':>10}{o['n']:>5}")
    lines.append(f"(method, check) pairs agreeing: {o['pair_agreement']:.2f} of {o['n_pairs']}")
    lines.append(f"{'model':<22}{'PASS':>6}{'FAIL':>6}{'INCONCL.':>10}{'oracle-based FAIL':>19}")
    for name, m in summary["models"].items():
        lines.append(f"{name:<22}{m['PASS']:>6}{m['FAIL']:>6}{m['INCONCLUSIVE']:>10}{m['oracle_based_FAIL']:>19}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
