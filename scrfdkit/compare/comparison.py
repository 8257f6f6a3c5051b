"""The detector comparison's report: evaluate_widerface.py APs joined to timed detectors
, the Pareto front of speed and Hard AP, the markdown table and the chart
(compare_detectors.py, which also evaluates the detectors that have no results yet)."""
from __future__ import annotations

import time
from pathlib import Path

from ..ap_results import find_results
from ..files import sha256_of
from ..tables import dash, markdown_table, pyplot, save_figure

ROUGH_KEY = ("rough-iou", "32px")  # the rough-protocol AP the comparison table shows
ZOOM = ((50.0, 135.0), (66.5, 78.0))  # chart's right panel: latency ms, Hard AP (the 640-class corner)


def eval_index(*patterns: str) -> dict[str, dict]:
    """evaluate_widerface.py results (globs or folders) by what they evaluated: model sha256
    and detector name."""
    index: dict[str, dict] = {}
    found = {r["file"]: r for pattern in patterns for r in find_results(pattern)}
    for result in found.values():
        model = result.get("model") or {}
        for key in (model.get("sha256"), model.get("name")):
            old = index.get(key)  # prefer a run that also scored the rough protocols
            if key and (old is None or (not old.get("rough") and result.get("rough"))):
                index[key] = result
    return index


def result_key(kind: str, name_or_path: str) -> str:
    """What eval_index() knows a detector's results by: an SCRFD model file ("scrfd") by its
    sha256, a peer ("peer") by its name."""
    return sha256_of(name_or_path) if kind == "scrfd" else name_or_path


def mark_pareto(rows: list[dict]) -> None:
    """pareto = True where no other detector is both faster and better on Hard AP."""
    ranked = sorted((r for r in rows if r.get("hard") is not None), key=lambda r: (r["median_ms"], -r["hard"]))
    best = -1.0
    for row in ranked:
        row["pareto"] = row["hard"] > best
        best = max(best, row["hard"])
        if not row["pareto"]:
            row["beaten_by"] = next(r["detector"] for r in ranked
                                    if r["median_ms"] <= row["median_ms"] and r["hard"] >= row["hard"]
                                    and r is not row)


def comparison_table(rows: list[dict], env: dict, photos: list[Path], threads: int, repeat: int,
                     rss_runs: int) -> list[str]:
    table = []
    for r in sorted(rows, key=lambda r: r["median_ms"]):
        pareto = "yes" if r.get("pareto") else (f"no ({r['beaten_by']})" if r.get("beaten_by") else "-")
        table.append([r["detector"], r["input"], dash(r.get("easy"), ".2f"), dash(r.get("medium"), ".2f"),
                      dash(r.get("hard"), ".2f"), dash(r.get("rough_ap"), ".2f"), f"{r['median_ms']:.1f}",
                      dash(r["size_mb"], ".2f"), dash(r.get("peak_rss_mb"), ".0f"), pareto])
    header = ["Detector", "Input", "Easy", "Medium", "Hard", "Rough AP", "Median ms", "Size MB",
              "Peak RSS MB", "Pareto"]
    return markdown_table(header, table, left=2, text=[-1]) + [
        "", f"Measured {time.strftime('%Y-%m-%d')} on {env['cpu']}, {env['cpu_features']} ({env['logical_cores']} "
            f"logical cores), {threads} thread(s). AP: WIDER FACE val, the images evaluate_widerface.py "
            "ran on (official protocol, %); Rough AP: IoU >= 0.3 with faces >= 32 px tall "
            "(--protocol rough). Median ms: one detect() call (preprocessing, inference, "
            f"decoding, NMS) on {len(photos)} photo(s) ({', '.join(p.name for p in photos[:3])}"
            f"{', ...' if len(photos) > 3 else ''}), {repeat} interleaved rounds, each "
            "detector at its recommended input size and thresholds. Peak RSS: a fresh process "
            f"that loads the detector and runs it {rss_runs} times on 2 photos. Pareto: "
            "no other detector is both faster and better on Hard AP (else the one that beats it)."]


def plot_comparison(rows: list[dict], out: Path) -> Path:
    """Hard AP against latency, whole range on the left, the crowded 640-pixel-class corner
    (ZOOM) on the right; SCRFD exports by precision (marker) and model (colour), other
    detectors as red squares, the Pareto front as a step line."""
    plt = pyplot()
    markers = {"float32": "o", "float16": "^", "int8": "D"}
    families = sorted({r["detector"].split("_")[0] for r in rows if r["kind"] == "scrfd"})
    colours = {family: f"C{i}" for i, family in enumerate(families)}
    front = sorted((r for r in rows if r.get("pareto")), key=lambda r: r["median_ms"])
    (x0, x1), (y0, y1) = ZOOM
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [1, 1.15]})
    for ax, zoomed in zip(axes, (False, True)):
        shown = [r for r in rows if not zoomed or (x0 <= r["median_ms"] <= x1 and y0 <= r["hard"] <= y1)]
        for index, row in enumerate(sorted(shown, key=lambda r: (r["hard"], r["median_ms"]))):
            scrfd = row["kind"] == "scrfd"
            ax.scatter(row["median_ms"], row["hard"], zorder=3, s=34,
                       marker=markers.get(row["precision"], "o") if scrfd else "s",
                       color=colours[row["detector"].split("_")[0]] if scrfd else "tab:red")
            inside = x0 <= row["median_ms"] <= x1 and y0 <= row["hard"] <= y1
            if zoomed or not scrfd and not inside or row.get("pareto") and not inside:
                label = (row["detector"].replace("scrfd", "").replace("_float", " f")
                         .replace("_int8", " int8").replace("_", " ") if scrfd else row["detector"])
                ax.annotate(label, (row["median_ms"], row["hard"]), fontsize=7,
                            xytext=(5, -3 if index % 2 else 3), textcoords="offset points")
        ax.step([r["median_ms"] for r in front], [r["hard"] for r in front], where="post",
                color="tab:green", alpha=0.6, zorder=2, label="Pareto front")
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("detect() latency, median ms, 1 thread (log scale)")
    axes[0].set_ylabel("WIDER FACE val Hard AP, %")
    axes[0].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ls="--", color="grey"))
    axes[1].set_xlim(x0, x1)
    axes[1].set_ylim(y0, y1)
    axes[0].set_title("all detectors")
    axes[1].set_title("zoom: the dashed box")
    for family, colour in colours.items():
        axes[0].scatter([], [], color=colour, marker="o", label=f"{family}: o float32, ^ float16, D int8")
    axes[0].scatter([], [], color="tab:red", marker="s", label="other detectors")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Face detectors on this CPU: speed against WIDER FACE Hard AP")
    fig.tight_layout()
    return save_figure(fig, out)
