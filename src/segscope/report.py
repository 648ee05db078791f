"""The HTML report: one self-contained file (plotly.js inlined, no server) a person would rather look at than read.

Sections: a 2-D map of the records coloured by segment with alerts ringed, score distributions (overall, by label,
by segment), the segments' profile cards, precision-recall curves when labels are given, and the top alerts with
their reasons. Every value taken from the data is HTML-escaped.
"""

from __future__ import annotations

import html
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from segscope._deps import require
from segscope._io import write_text_atomic
from segscope.exceptions import ConfigError, DataError, SchemaError
from segscope.labels.parse import label_values
from segscope.sources.files import count_rows, sample_rows
from segscope.unsupervised.adapt import adapt_line
from segscope.unsupervised.drift import DriftReport, adaptation_of
from segscope.unsupervised.profiles import card_view

if TYPE_CHECKING:
    from segscope.model import Model

__all__ = ["ReportData", "build_report", "load_report_data", "write_report"]

_NOISE_COLOUR = "#b8b8b8"
_ALERT_COLOUR = "#d62728"


@dataclass(frozen=True)
class ReportData:
    """Scored rows for the report. ``labels``: 1 anomaly / 0 normal / -1 unlabelled, aligned with ``scored``."""

    scored: pl.DataFrame
    labels: np.ndarray | None = None
    source: str = ""
    total_rows: int | None = None
    drift: DriftReport | None = None
    #: what online adaptation did while the rows were scored in order (``adapt:``)
    adapted: str | None = None


def build_report(
    model: Model, data: ReportData | None = None, *, map_rows: int = 3000, seed: int = 0, title: str = "segscope"
) -> str:
    """The report as one HTML document."""
    require("plotly", extra="report", feature="the HTML report")
    sections = [_header(model, data, title)]
    sections.append(_section("Map", *_map(model, data, map_rows, seed)))
    if data is not None:
        sections.append(_section("Score distributions", *_distributions(model, data)))
        if data.labels is not None and (data.labels >= 0).any():
            sections.append(_section("Precision-recall", *_pr_curves(data)))
    if model.segment_profiles:
        sections.append(_section("Segment profiles", _profile_cards(model, data), ""))
    if data is not None and data.drift is not None:
        sections.append(_section("Drift against the fit data", _drift(data.drift), ""))
    if data is not None:
        sections.append(_section("Top alerts", _top_alerts(model, data), ""))
    from plotly.offline import get_plotlyjs

    return _PAGE.format(title=html.escape(title), plotly=get_plotlyjs(), body="\n".join(sections), css=_CSS)


def load_report_data(
    model: Model,
    path: str | Path,
    *,
    label_column: str | None = None,
    labels: pl.DataFrame | None = None,
    max_rows: int = 200_000,
    seed: int = 0,
) -> ReportData:
    """Score (a uniform sample of at most ``max_rows`` rows of) a data file for the report. Labels come from a
    column of the file (every row labelled) or from a labels frame (``id,label``) joined on the id column."""
    total = count_rows(path)
    if total == 0:
        raise DataError(f"{path}: the file has a header but no rows; the report needs at least one row")
    frame = sample_rows(path, total, max_rows, seed)
    values: np.ndarray | None = None
    if label_column is not None:
        if label_column not in frame.columns:
            raise SchemaError(f"{path}: no column '{label_column}'; --label-column must name a 0/1 column of DATA")
        values = label_values(frame.get_column(label_column), source=f"{path}: column '{label_column}'").to_numpy()
    elif labels is not None:
        id_column = model.id_column
        if id_column is None or id_column not in frame.columns:
            raise SchemaError("labels are joined on the id column; the bundle has none (fit with --id-column)")
        joined = frame.select(pl.col(id_column).cast(pl.String).alias("id")).join(labels, on="id", how="left")
        values = joined["label"].fill_null(-1).to_numpy()
    drift = model.drift_tracker()
    state = model.new_state() if model.config.adapt is not None else None
    scored = model.score(frame, drift=drift, state=state)
    report = drift.report(adaptation_of(model.config.policy, model.config.adapt)) if drift is not None else None
    adapted = adapt_line(model.config, state.entities) if state is not None else None
    return ReportData(scored, values, Path(path).name, total, report, adapted)


def write_report(model: Model, out: str | Path, data: ReportData | None = None, **options: Any) -> Path:
    """Build the report and write it atomically to ``out`` (.html)."""
    out = Path(out)
    if out.suffix.lower() not in {".html", ".htm"}:
        raise ConfigError(f"{out}: the report is an HTML file; give --out a name ending in .html")
    if not out.parent.is_dir():
        raise ConfigError(f"{out.parent}: folder does not exist; create it or choose another --out")
    write_text_atomic(out, build_report(model, data, **options))
    return out


# ------------------------------------------------------------------ sections
def _header(model: Model, data: ReportData | None, title: str) -> str:
    facts = [("model version", model.version), ("created", model.created_at)]
    if model.supervised is not None:
        facts.append(("learner", "fine-tuned on analyst labels"))
    segmenter = model.segmenter
    if segmenter is not None:
        held = segmenter.agreement_held_out_
        agreement = f"{segmenter.agreement_fit_:.1%} of the fit sample" + (
            f", {held:.1%} held out" if held is not None else ""
        )
        facts.append(("segments", f"{segmenter.segments_.size} (assignment agrees with fit labels on {agreement})"))
    else:
        facts.append(("segments", "not fitted (enable [segments] in the config)"))
    if data is not None:
        n = data.scored.height
        total = data.total_rows if data.total_rows is not None else n
        shown = f"{n:,} rows" + (f" (a uniform sample of {total:,})" if total > n else "")
        alerts = int(data.scored["is_alert"].sum())
        facts += [("data", f"{data.source} — {shown}"), ("alerts", f"{alerts:,} ({alerts / max(n, 1):.2%})")]
        if data.adapted is not None:
            facts.append(("adaptation", data.adapted))
        if data.labels is not None:
            labelled = data.labels >= 0
            facts.append(("labels", f"{int(labelled.sum()):,} labelled, {int((data.labels == 1).sum()):,} anomalies"))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    return f"<header><h1>{html.escape(title)} report</h1><table class='facts'>{rows}</table></header>"


def _map(model: Model, data: ReportData | None, map_rows: int, seed: int) -> tuple[str, str]:
    import plotly.graph_objects as go

    fig = go.Figure()
    score = None
    if data is None:
        segmenter = model.segmenter
        if segmenter is None:
            return "<p>Give a data file to draw the map.</p>", ""
        xy, segment, alert, hover = segmenter.embedding_, segmenter.sample_labels_, None, None
        caption = f"The fit sample ({xy.shape[0]:,} rows) in the first two UMAP dimensions, coloured by segment."
    else:
        rows = _map_sample(data.scored, map_rows, seed)
        sample = data.scored[rows]
        xy, how = _project(model, sample, seed)
        segment, score = sample["segment"].to_numpy(), sample["score"].to_numpy()
        alert = sample["is_alert"].to_numpy()
        hover = _hover_text(model, sample)
        caption = (
            f"{sample.height:,} records ({int(alert.sum()):,} alerts, all shown when they fit) placed by {how} of "
            "their prepared features, coloured by segment; alerts are ringed in red."
        )
    has_segments = model.segmenter is not None
    if has_segments:
        for seg in sorted(set(segment.tolist()), key=lambda s: (s < 0, s)):
            pick = segment == seg
            fig.add_trace(
                go.Scatter(
                    x=xy[pick, 0],
                    y=xy[pick, 1],
                    mode="markers",
                    name="noise" if seg < 0 else f"segment {seg}",
                    marker={"size": 5, "opacity": 0.75, **({"color": _NOISE_COLOUR} if seg < 0 else {})},
                    hovertext=None if hover is None else [hover[i] for i in np.flatnonzero(pick)],
                    hoverinfo="text" if hover is not None else "name",
                )
            )
    else:
        fig.add_trace(
            go.Scatter(
                x=xy[:, 0],
                y=xy[:, 1],
                mode="markers",
                name="records",
                marker={"size": 5, "color": score, "colorscale": "Viridis", "colorbar": {"title": "score"}},
                hovertext=hover,
                hoverinfo="text",
            )
        )
    if alert is not None and alert.any():
        fig.add_trace(
            go.Scatter(
                x=xy[alert, 0],
                y=xy[alert, 1],
                mode="markers",
                name="alerts",
                marker={"size": 11, "symbol": "circle-open", "color": _ALERT_COLOUR, "line": {"width": 2}},
                hovertext=None if hover is None else [hover[i] for i in np.flatnonzero(alert)],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        height=620, xaxis={"showticklabels": False, "title": ""}, yaxis={"showticklabels": False, "title": ""}
    )
    return _figure(fig, "map"), caption


def _distributions(model: Model, data: ReportData) -> tuple[str, str]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    scored = data.scored
    score = scored["score"].to_numpy()
    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45], subplot_titles=("score", "score by segment"))
    if data.labels is not None and (data.labels >= 0).any():
        groups = (
            (data.labels == 0, "labelled normal", "#1f77b4"),
            (data.labels == 1, "labelled anomaly", _ALERT_COLOUR),
            (data.labels < 0, "unlabelled", _NOISE_COLOUR),
        )
        for rows, name, colour in groups:
            if rows.any():
                fig.add_trace(
                    go.Histogram(
                        x=score[rows], name=name, nbinsx=60, histnorm="probability", marker_color=colour, opacity=0.6
                    ),
                    row=1,
                    col=1,
                )
        fig.update_layout(barmode="overlay")
    else:
        fig.add_trace(go.Histogram(x=score, name="all records", nbinsx=60, marker_color="#1f77b4"), row=1, col=1)
    threshold = model.alert_threshold
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color=_ALERT_COLOUR, row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=1)
    sizes = scored.group_by("segment").len().sort("len", descending=True).head(15)
    for seg in sizes["segment"].to_list():
        values = scored.filter(pl.col("segment") == seg)["score"].to_numpy()
        fig.add_trace(
            go.Box(
                y=values,
                name="noise" if seg < 0 else f"seg {seg}",
                boxpoints=False,
                showlegend=False,
                marker_color=_NOISE_COLOUR if seg < 0 else None,
            ),
            row=1,
            col=2,
        )
    fig.update_layout(height=460)
    caption = "Score histogram (log count" + (", per label" if data.labels is not None else "") + ")"
    caption += "; the dashed line is the alert threshold." if threshold is not None else "."
    caption += " Right: score by segment (the 15 largest)."
    return _figure(fig, "scores"), caption


def _pr_curves(data: ReportData) -> tuple[str, str]:
    import plotly.graph_objects as go
    from sklearn.metrics import average_precision_score, precision_recall_curve

    assert data.labels is not None
    labelled = data.labels >= 0
    y = data.labels[labelled]
    fig = go.Figure()
    for column in ("score", "anomaly_score", "supervised_score"):
        values = data.scored[column].to_numpy()[labelled]
        if np.isnan(values.astype(np.float64)).all() or (column == "score" and _same(data.scored, "anomaly_score")):
            continue
        precision, recall, _ = precision_recall_curve(y, values)
        keep = np.unique(np.linspace(0, precision.size - 1, min(precision.size, 800)).astype(np.int64))
        ap = average_precision_score(y, values)
        fig.add_trace(go.Scatter(x=recall[keep], y=precision[keep], mode="lines", name=f"{column} (AP {ap:.3f})"))
    base = float(y.mean())
    fig.add_hline(y=base, line_dash="dot", line_color=_NOISE_COLOUR)
    fig.update_layout(
        height=460, xaxis={"title": "recall", "range": [0, 1]}, yaxis={"title": "precision", "range": [0, 1.02]}
    )
    caption = (
        f"On {int(labelled.sum()):,} labelled rows ({int(y.sum()):,} anomalies); the dotted line is the base rate."
    )
    return _figure(fig, "pr"), caption


def _same(scored: pl.DataFrame, column: str) -> bool:
    return bool(scored["score"].equals(scored[column]))


def _profile_cards(model: Model, data: ReportData | None) -> str:
    live: dict[int, tuple[int, float]] = {}
    if data is not None:
        for seg, n, rate in data.scored.group_by("segment").agg(pl.len(), pl.col("is_alert").mean()).iter_rows():
            live[int(seg)] = (int(n), float(rate))
    cards = []
    for view in map(card_view, model.segment_profiles):
        facts = f"{view.size:,} fit rows ({view.share:.1%})"
        if view.anomaly_rate is not None:
            facts += f", alert rate at fit {view.anomaly_rate:.1%}"
        if view.segment in live:
            facts += f"; in this data {live[view.segment][0]:,} rows, alert rate {live[view.segment][1]:.1%}"
        rows = "".join(
            "<tr><td>{f}</td><td class='bar'><span style='width:{w}%;background:{c}'></span>{e:+.2f}</td>"
            "<td>{t}</td><td>{o}</td></tr>".format(
                f=html.escape(feature),
                w=min(100, abs(effect) * 25),
                c="#2ca02c" if effect > 0 else "#9467bd",
                e=effect,
                t=html.escape(typical),
                o=html.escape(overall),
            )
            for feature, effect, typical, overall in view.distinguishing
        )
        name = view.name
        cards.append(
            f"<div class='card'><h3>{html.escape(name)}</h3><p>{html.escape(facts)}</p>"
            "<table><tr><th>feature</th><th>effect size</th><th>typical here</th><th>overall</th></tr>"
            f"{rows}</table></div>"
        )
    return "<p>Effect size: the segment's mean against the rest's, in units of the feature's overall spread.</p>" + (
        f"<div class='cards'>{''.join(cards)}</div>"
    )


def _drift(report: DriftReport, limit: int = 15) -> str:
    """The columns that moved most since the fit (PSI, share outside the fit range, unseen categories)."""
    warning = report.summary()
    expected = report.expected_alert_rate
    lines = [
        f"<p>alert rate {report.alert_rate:.1%}"
        + (f" (the policy expects {expected:.1%} on data like the fit data)" if expected is not None else "")
        + "</p>",
        f"<p class='warn'>{html.escape(warning)}</p>" if warning else "<p>no column drifted past the thresholds</p>",
        "<table class='alerts'><tr><th>column</th><th>PSI</th><th>outside the fit range</th><th>unseen categories</th>"
        "<th>fit range</th></tr>",
    ]
    for column in sorted(report.columns, key=lambda c: -c.psi)[:limit]:
        mark = " class='warn'" if column.shifted else ""
        lines.append(
            f"<tr{mark}><td>{html.escape(column.name)}</td><td>{column.psi:.3f}</td><td>{column.outside:.1%}</td>"
            f"<td>{column.unseen:.1%}</td><td>{html.escape(column.fit_range)}</td></tr>"
        )
    lines.append("</table><p>PSI above 0.25 is the usual threshold of a major shift.</p>")
    return "".join(lines)


def _top_alerts(model: Model, data: ReportData, limit: int = 25) -> str:
    id_column = model.id_column
    top = data.scored.sort("score", descending=True).head(limit)
    head = "".join(f"<th>{h}</th>" for h in ("id", "score", "alert", "segment", "why (value vs expected, share)"))
    body = []
    for i, row in enumerate(top.iter_rows(named=True)):
        ident = row[id_column] if id_column and id_column in row else f"row {i}"
        why = "; ".join(
            f"{r['feature']} = {r['value']} (expected {r['expected']}, {r['contribution']:.0%})"
            for r in row["reasons"] or []
        )
        body.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (ident, f"{row['score']:.4f}", "yes" if row["is_alert"] else "no", row["segment"], why)
            )
            + "</tr>"
        )
    return f"<table class='alerts'><tr>{head}</tr>{''.join(body)}</table>"


# ------------------------------------------------------------------ helpers
def _map_sample(scored: pl.DataFrame, map_rows: int, seed: int) -> np.ndarray:
    """Row indices for the map: the alerts (up to half the map) plus a uniform sample of the rest."""
    n = scored.height
    if n <= map_rows:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    alerts = np.flatnonzero(scored["is_alert"].to_numpy())
    alerts = rng.choice(alerts, size=min(alerts.size, map_rows // 2), replace=False) if alerts.size else alerts
    rest = np.setdiff1d(np.arange(n), alerts)
    others = rng.choice(rest, size=map_rows - alerts.size, replace=False)
    return np.sort(np.concatenate([alerts, others]))


def _project(model: Model, sample: pl.DataFrame, seed: int) -> tuple[np.ndarray, str]:
    """2-D coordinates of the sample's prepared features: UMAP when installed, else PCA."""
    x = model.prepared(sample)
    if x.shape[0] >= 10:
        try:
            import umap
        except ImportError:
            pass
        else:
            reducer = umap.UMAP(n_components=2, n_neighbors=min(15, x.shape[0] - 1), random_state=seed, n_jobs=1)
            with warnings.catch_warnings():  # "graph is not fully connected": separate islands, fine for a map
                warnings.filterwarnings("ignore", message="Graph is not fully connected")
                return np.asarray(reducer.fit_transform(x)), "a 2-D UMAP"
    from sklearn.decomposition import PCA

    k = min(2, x.shape[0], x.shape[1])
    xy = np.zeros((x.shape[0], 2))
    if k:
        xy[:, :k] = PCA(n_components=k, random_state=seed).fit_transform(x)
    return xy, "the first two principal components"


def _hover_text(model: Model, sample: pl.DataFrame) -> list[str]:
    id_column = model.id_column
    texts = []
    for i, row in enumerate(
        sample.select(*([id_column] if id_column else []), "score", "segment", "reasons").iter_rows(named=True)
    ):
        ident = row[id_column] if id_column else f"row {i}"
        reasons = "<br>".join(
            html.escape(f"{r['feature']} = {r['value']} (expected {r['expected']})") for r in row["reasons"] or []
        )
        texts.append(f"{html.escape(str(ident))}<br>score {row['score']:.3f}, segment {row['segment']}<br>{reasons}")
    return texts


def _figure(fig: Any, name: str) -> str:
    fig.update_layout(template="plotly_white", margin={"l": 40, "r": 20, "t": 40, "b": 40})
    return str(
        fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{name}", config={"displaylogo": False})
    )


def _section(title: str, body: str, caption: str) -> str:
    note = f"<p class='caption'>{html.escape(caption)}</p>" if caption else ""
    return f"<section><h2>{html.escape(title)}</h2>{note}{body}</section>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0 auto;max-width:1200px;padding:1.5rem;
color:#222;background:#fafafa}
h1{margin:.2rem 0 1rem}h2{border-bottom:2px solid #ddd;padding-bottom:.3rem;margin-top:2.2rem}
section{background:#fff;padding:.5rem 1.2rem 1.2rem;border-radius:8px;box-shadow:0 1px 3px #0002;margin-bottom:1rem}
table{border-collapse:collapse;font-size:.9rem}th,td{text-align:left;padding:.25rem .6rem;border-bottom:1px solid #eee}
.facts th{color:#555;font-weight:600}.caption{color:#555}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:1rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.4rem .8rem;overflow-x:auto}.card h3{margin:.3rem 0}
.card table{font-size:.82rem;width:100%}
.bar{position:relative;min-width:90px}.bar span{display:inline-block;height:.7rem;margin-right:.4rem;opacity:.7}
.alerts td:last-child{font-size:.85rem}
.warn{color:#a12;font-weight:600}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title} report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{css}</style>
<script type="text/javascript">{plotly}</script>
</head><body>
{body}
</body></html>
"""
