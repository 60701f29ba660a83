"""The source ranking as rows, sorted and numbered, and as tables for people: markdown for
MLflow and Prefect, fixed-width text for the terminal. Plain data in, strings out."""

from __future__ import annotations

import math

from tasks.transferability.scores import SCORES


def rank_rows(rows: list[dict], score: str) -> list[dict]:
    """Sort best first by ``score`` (a missing score ranks last) and number the rows."""

    def key(row):
        value = row.get(score)
        return (value is None or math.isnan(value), -(value or 0.0))

    ranked = sorted(rows, key=key)
    for position, row in enumerate(ranked, 1):
        row["rank"] = position if ranked[position - 1].get(score) is not None else None
    return ranked


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def ranking_markdown(rows: list[dict], score: str, target: str) -> str:
    head = (
        f"## Source ranking\n\nTarget: {target}. Ranked by **{score}** (higher is better for "
        "every score; LEEP and NCE need the source's classifier).\n\n"
        "| rank | candidate | origin | arch | logme | leep | nce | h_score | seconds | note |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['rank'] or '-'} | {r['candidate']} | {r['origin']} | {r['arch']} | "
        + " | ".join(_fmt(r[s]) for s in SCORES)
        + f" | {r['seconds']:.2f} | {r['note']} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def ranking_text(rows: list[dict], score: str) -> str:
    width = max([len("candidate"), *(len(r["candidate"]) for r in rows)])
    header = f"{'rank':>4}  {'candidate':<{width}}  " + "  ".join(
        f"{s + ('*' if s == score else ''):>9}" for s in SCORES
    )
    lines = [header]
    for r in rows:
        cells = "  ".join(f"{_fmt(r[s]):>9}" for s in SCORES)
        note = f"  ({r['note']})" if r["note"] else ""
        lines.append(f"{r['rank'] or '-':>4}  {r['candidate']:<{width}}  {cells}{note}")
    return "\n".join(lines) + f"\n* ranked by {score}"
