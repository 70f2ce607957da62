"""A search's run folder: trials.csv and trials.md (every trial of the study), best.json (the best encoder: its
checkpoint, its recipe and the `featcache pretrain` command that makes it again) and score_vs_cost.png."""

from __future__ import annotations

import csv
import io
import math
import shlex
from pathlib import Path
from typing import Any

from ..common.files import atomic_write, write_json, write_text
from .options import ARCH_PARAMETERS, SearchOptions
from .trial import ENCODER

COLUMNS = ("number", "state", "worker", "epochs_done", "cpu_minutes", "val_r2", "objective", "probe_cpu_minutes")


def trial_rows(study: Any, opts: SearchOptions) -> list[dict[str, Any]]:
    """One row per trial: its state, parameters, cost, validation score and objective (the last probe's)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        row: dict[str, Any] = {"number": t.number, "state": t.state.name.lower(), "worker": attrs.get("worker", ""),
                               "epochs_done": attrs.get("epochs_done"), "cpu_minutes": attrs.get("cpu_minutes"),
                               "val_r2": attrs.get("val_r2"), "objective": t.value,
                               "probe_cpu_minutes": attrs.get("probe_cpu_minutes")}
        if t.state.name == "PRUNED" and t.intermediate_values:
            row["objective"] = t.intermediate_values[max(t.intermediate_values)]
        row.update({name: t.params.get(name) for name in opts.space})
        row["folder"] = attrs.get("folder", "")
        row["note"] = attrs.get("error", "") or (f"retry of {attrs['retry_of']}" if "retry_of" in attrs else "") or \
            (f"the settings of trial {attrs['duplicate_of']}: its result" if "duplicate_of" in attrs else "")
        rows.append(row)
    return rows


def pretrain_command(opts: SearchOptions, params: dict[str, Any], out: str) -> str:
    """The `featcache pretrain` command line that trains the trial's encoder again (one thread, as it was)."""
    words = ["featcache", "pretrain", *[w for d in opts.data for w in ("--data", d)], "--out", out]
    for name, value in {**opts.pretrain, **params}.items():
        flag = "--" + name.replace("_", "-")
        if name == "aux_targets":
            words += [w for target in value for w in ("--aux-target", str(target))]
        elif isinstance(value, bool):
            words.append(flag if value else "--no-" + name.replace("_", "-"))
        elif value is not None:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in [*words, "--threads", str(opts.threads)])


def write_report(study: Any, opts: SearchOptions) -> dict[str, Any] | None:
    """The run folder's files (see the module docstring); returns best.json's content (None before any trial
    completes)."""
    rows = trial_rows(study, opts)
    columns = [*COLUMNS, *opts.space, "folder", "note"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(opts.out / "trials.csv", buffer.getvalue())
    write_text(opts.out / "trials.md", _markdown(rows, opts))
    complete = [r for r in rows if r["state"] == "complete" and r["objective"] is not None and
                not r["note"].startswith("the settings of")]
    best = None
    if complete:
        top = max(complete, key=lambda r: r["objective"])
        params = {name: top[name] for name in opts.space}
        best = {"trial": top["number"], "objective": top["objective"], "objective_kind": opts.objective,
                "val_r2": top["val_r2"], "cpu_minutes": top["cpu_minutes"], "targets": opts.targets,
                "probe": f"{opts.probe_head} on {opts.probe_layer}/{opts.probe_pool} (validation split of "
                         f"{', '.join(opts.probe_data)})",
                "encoder": str(Path(top["folder"]) / ENCODER),
                "architecture": {k: v for k, v in params.items() if k in ARCH_PARAMETERS},
                "recipe": {**opts.pretrain, **{k: v for k, v in params.items() if k not in ARCH_PARAMETERS}},
                "command": pretrain_command(opts, params, "BEST.ckpt"),
                "note": "validation scores only: score the chosen encoder on the test split once, with featcache "
                        "compare"}
        write_json(opts.out / "best.json", best)
    _plot(rows, opts, best)
    return best


def _number(value: Any, digits: int = 4) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"


def _markdown(rows: list[dict[str, Any]], opts: SearchOptions) -> str:
    what = "val R2 / CPU-min" if opts.objective == "ratio" else "val R2"
    head = ["trial", "state", *opts.space, "epochs", "CPU-min (pretrain)", "val R2", what]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["number"]), r["state"], *[str(r[k]) for k in opts.space], str(r["epochs_done"] or ""),
                 _number(r["cpu_minutes"], 3), _number(r["val_r2"]), _number(r["objective"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], opts: SearchOptions, best: dict[str, Any] | None) -> None:
    """score_vs_cost.png: validation R2 against CPU-minutes of pretraining, pruned trials at their last probe,
    the best trial marked and the Pareto front (no cheaper trial scores higher) drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r["cpu_minutes"] is not None and r["val_r2"] is not None and
              not r["note"].startswith("the settings of")]  # a repeated setting is its first trial's point
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for state, style in (("complete", dict(color="C0", marker="o")), ("pruned", dict(color="0.6", marker="x"))):
        chosen = [r for r in points if r["state"] == state]
        ax.scatter([r["cpu_minutes"] for r in chosen], [r["val_r2"] for r in chosen], label=f"{state} ({len(chosen)})",
                   **style)
    front, top = [], -math.inf
    for r in sorted((r for r in points if r["state"] == "complete"), key=lambda r: r["cpu_minutes"]):
        if r["val_r2"] > top:
            front.append(r)
            top = r["val_r2"]
    if front:
        ax.step([r["cpu_minutes"] for r in front], [r["val_r2"] for r in front], where="post", color="C0", alpha=0.5,
                label="Pareto front")
    if best is not None:
        ax.scatter([best["cpu_minutes"]], [best["val_r2"]], marker="*", s=220, color="C3", zorder=3,
                   label=f"best {opts.objective} (trial {best['trial']})")
    ax.set_xlabel("CPU-minutes of pretraining")
    ax.set_ylabel(f"validation R2 ({', '.join(opts.targets)}; {opts.probe_head})")
    ax.set_title(f"featcache search {opts.study_name}: {len(points)} trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(opts.out / "score_vs_cost.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
