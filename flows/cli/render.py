"""What the verbs print: JSON summaries on stdout and the console reports of validate and drift.
The library's warnings (empty or missing classes, files left out with their reasons) reach stderr
through the ``ml`` logger (see :func:`flows.cli.main`)."""

from __future__ import annotations

import json

import typer


def echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))  # JSON escapes control characters itself


def shown(text: str) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``, ``\\u2028``): a file
    name cannot break a console line or forge another one."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text)


def echo(text: str) -> None:
    """One console line: the text as :func:`shown`."""
    typer.echo(shown(str(text)))


def manifest_summary(m) -> None:
    """A manifest's summary as JSON on stdout."""
    echo_json(m.summary())


# --------------------------------------------------------------------------- validate
def validation(report: dict) -> None:
    """The files quarantined (when any), one line per check (PASS, FAIL for a critical one, WARN),
    what a failed check found, the findings behind the counts, and where the reports are."""
    from ml.quality.validation import details_lines

    quarantined(report.get("quarantine"))  # first: the checks below ran on the files left
    rows = report["results"]
    w = max((len(r.get("check") or r["expectation"]) for r in rows), default=10)
    for r in rows:
        mark = "PASS" if r["success"] else ("FAIL" if r["severity"] == "critical" else "WARN")
        observed = f"{r['observed']:.4g}" if isinstance(r["observed"], float) else r["observed"]
        echo(
            f"{mark:4}  {r['suite']:<18} {r.get('check') or r['expectation']:<{w}}  "
            f"observed={observed}  threshold={r.get('threshold')}  ({r['expectation']})"
        )
        if not r["success"]:  # what the check found, by name
            for line in details_lines(r.get("details") or {}):
                echo(f"      {line}")
    findings(report)
    echo(
        f"dataset version {report.get('dataset_version')}; report: {report.get('summary_html') or 'not written'}; "
        f"data docs: {report.get('data_docs')}"
    )


def quarantined(quarantine: dict | None) -> None:
    """The files the policy quarantined (bounded, "and N more"), where the full list and the new
    version are, and what the version they came from failed; nothing when none."""
    from ml.quality.validation import MAX_EXAMPLES, bounded

    if not quarantine:
        return
    echo(f"quarantined: {quarantine['summary']}; the checks below ran on the files left")
    failed = ", ".join(quarantine["failed_before"]) or "nothing"
    echo(f"      dataset version {quarantine['parent_dataset_version']} failed: {failed}")
    rows = [f"{r['path']} [{r['label']}]: {r['reason']}, group {r['group']} ({r['note']})" for r in quarantine["rows"]]
    for line in bounded(rows, MAX_EXAMPLES):
        echo(f"      {line}")
    echo(f"      every file: {quarantine['csv']}; the new version: {quarantine['manifest']}")


def findings(report: dict) -> None:
    """What the counts are made of: the files not used with their reasons, the duplicate groups
    with their paths (bounded, "and N more") and the confounder kinds flagged per kind."""
    from ml.quality.validation import MAX_EXAMPLES, MAX_PATHS, bounded

    bad = report.get("bad_files") or []
    if bad:
        echo(f"files not used ({len(bad)}):")
        for line in bounded([f"{b['path']}: {b['reason']}" for b in bad], MAX_EXAMPLES):
            echo(f"      {line}")
    groups = report.get("duplicate_groups") or []
    if groups:
        echo(f"duplicate groups ({len(groups)}):")
        lines = [
            f"group {g['group']} ({g['kind']}, {g['n']} images, split {', '.join(x or 'none' for x in g['splits'])}): "
            + "; ".join(bounded(g["paths"], MAX_PATHS))
            for g in groups
        ]
        for line in bounded(lines, MAX_EXAMPLES):
            echo(f"      {line}")
    by_class = report.get("confounders_by_class") or []
    if by_class:
        kinds = [k for k in by_class[0] if k not in ("label", "images")]
        totals = {k: sum(int(row[k]) for row in by_class) for k in kinds}
        echo("confounder kinds (images flagged): " + ", ".join(f"{k}={n}" for k, n in totals.items()))


# --------------------------------------------------------------------------- drift
def drift(summary: dict) -> None:
    """The verdict, one line per test, the BBSE priors, what was left out of the batch, and where
    the report, the run, the event and the notification went."""
    cov, emb, lab = summary["covariate"], summary["embedding"], summary["label_shift"]
    bbse = lab.get("bbse") or {}
    rows = [
        (
            "covariate",
            cov["drifted"],
            f"drifted share {cov['drifted_share']:.2f} of {cov['n_tested']} columns "
            f"(threshold {cov['share_threshold']}); Holm-significant: "
            f"{', '.join(cov['holm_significant']) or 'none'}",
        ),
        (
            "embeddings",
            emb["drifted"],
            f"model AUC {emb['model_auc']:.3f} (threshold {emb['model_auc_threshold']:.3f}), "
            f"MMD {emb['mmd']:.4f} (threshold {emb['mmd_threshold']})"
            if emb["model_auc"] is not None
            else "not measured: too few reference images for the embedding tests",
        ),
        ("predicted classes", lab["predicted"]["drifted"], f"chi-square p={lab['predicted']['p_value']:.3g}"),
    ]
    if lab.get("true_labels"):
        rows.append(("true labels", lab["true_labels"]["drifted"], f"chi-square p={lab['true_labels']['p_value']:.3g}"))
    if bbse:
        rows.append(
            (
                "BBSE priors",
                bbse["drifted"],
                f"max change {bbse['max_prior_change']:.3f}; expected accuracy "
                f"{bbse['expected_accuracy']:.3f} (reference "
                f"{bbse['reference_accuracy']:.3f})",
            )
        )
    echo(
        f"DRIFT VERDICT: {summary['verdict'].upper()}  ({summary['n_batch']} batch vs "
        f"{summary['n_reference']} reference images)"
    )
    for name, drifted, text in rows:
        echo(f"{'DRIFT' if drifted else 'ok':5}  {name:<17} {text}")
    if summary["top_drifted"]:
        echo("top drifted features: " + ", ".join(summary["top_drifted"]))
    if bbse:
        echo(
            "BBSE priors: "
            + ", ".join(
                f"{c} {p:.2f} [{bbse['interval_low'][c]:.2f}, {bbse['interval_high'][c]:.2f}]"
                for c, p in bbse["priors"].items()
            )
        )
    inputs = summary.get("inputs", {})
    for k, n in sorted((inputs.get("out_of_map") or {}).items()):
        echo(f"out of map (kept as unlabelled): {k}: {n} image(s)")
    for bad in inputs.get("bad_files", []):
        echo(f"skipped: {bad['path']}: {bad['reason']}")
    for group in inputs.get("duplicate_groups", []):
        echo("duplicates: " + ", ".join(group))
    echo(
        f"report: {summary.get('report_page') or summary['report_html']} (the verdict, then Evidently's report); "
        f"MLflow run {summary['mlflow_run_id']} (skinflow-monitor)"
    )
    echo(f"event: {summary['event']}")
    if summary.get("prefect_api") == "ephemeral":
        echo(
            "note: no PREFECT_API_URL: flows ran on the in-process ephemeral Prefect API, where events do "
            "nothing (no automation starts a retrain); point PREFECT_API_URL at a Prefect server for that"
        )
    echo(f"notification: {summary['notification']}")
