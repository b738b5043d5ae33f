"""results.json → results.md (tables) and throughput.png (plots)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

THROUGHPUT_UNITS = ("req/s", "events/s")


def _number(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if digits == 0 and abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def _measure_text(measure: dict[str, Any]) -> str:
    text = f"{_number(measure['median'])} {measure['unit']}"
    if measure["repeats"] > 1:
        text += f" [{_number(measure['min'])}-{_number(measure['max'])}]"
    return text


def _ratio_text(ratio: dict[str, Any]) -> str:
    value = ratio["value"]
    if value is None or math.isnan(value):
        return "-"
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    text = f"**{value:.{digits}f}x**"
    low, high = ratio["min"], ratio["max"]
    if not (math.isnan(low) or math.isnan(high)) and (abs(high - low) > 0.005):
        text += f" [{low:.{digits}f}-{high:.{digits}f}]"
    return text


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**MISSED**", None: "(reported)"}[met]


def _target_text(target: str | None) -> str:
    if not target:
        return "-"
    return target.replace("<=", "≤").replace(">=", "≥") + "x"


def _find(measures: list[dict[str, Any]], label: str) -> dict[str, Any]:
    for measure in measures:
        if measure["label"] == label:
            return measure
    raise KeyError(label)


def summary_table(results: dict[str, Any]) -> str:
    """One row per ratio and check of every benchmark: the table that opens results.md."""
    lines = [
        "| benchmark | measure | clerk-sync | baseline | ratio [spread] | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    for bench in results["benchmarks"]:
        if bench["error"]:
            lines.append(
                f"| {bench['title']} | - | error: {bench['error'][:80]} | | | | **ERROR** |"
            )
            continue
        for ratio in bench["ratios"]:
            subject = _find(bench["measures"], ratio["subject"])
            baseline = _find(bench["measures"], ratio["baseline"])
            lines.append(
                f"| {bench['title']} | {ratio['name']} | {_measure_text(subject)} | "
                f"{_measure_text(baseline)} ({ratio['baseline']}) | {_ratio_text(ratio)} | "
                f"{_target_text(ratio['target'])} | "
                f"{ratio.get('verdict') or _verdict(ratio['met'])} |"
            )
        for check in bench["checks"]:
            lines.append(
                f"| {bench['title']} | {check['name']} | {check['value']} | | | "
                f"{check['target']} | {_verdict(check['met'])} |"
            )
    return "\n".join(lines)


def machine_text(results: dict[str, Any]) -> str:
    machine = results["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    start, end = results["load_before"], results["load_after"]
    return "\n".join(
        [
            f"- CPU: {machine['cpu_model']}, {machine['logical_cores']} logical cores "
            f"({machine['physical_cores']} physical), {machine['memory_gib']} GiB",
            f"- {machine['platform']}; Python {machine['python']}; PostgreSQL "
            f"{machine.get('postgresql')} (shared_buffers "
            f"{machine.get('postgresql_shared_buffers')}, synchronous_commit "
            f"{machine.get('postgresql_synchronous_commit')}); Redis "
            f"{machine.get('redis')} (AOF {machine.get('redis_aof_enabled')}); {machine['wrk']}",
            f"- load average before {start['load_1m']} / after {end['load_1m']} (1 min), "
            f"CPU busy before {start['cpu_percent']} % / after {end['cpu_percent']} %",
            f"- revision {machine['revision']}; {packages}",
        ]
    )


def _profile_text(profile: dict[str, Any]) -> list[str]:
    if "error" in profile:
        return [f"Profile: {profile['error']}", ""]
    lines = [
        f"Profile (py-spy `--gil`, {profile['samples']:,} samples of threads running Python "
        f"code in the process tree, `{profile['file']}`):",
        "",
        "| own time by library | % | own time by function | % | through project function | % |",
        "|---|---|---|---|---|---|",
    ]
    columns = [
        profile["self_by_package"],
        profile["self_by_function"],
        profile["project_inclusive"],
    ]
    for row in range(max(len(column) for column in columns)):
        cells = []
        for column in columns:
            if row < len(column):
                name, share = column[row]
                cells += [f"`{name}`", f"{share}"]
            else:
                cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def markdown(results: dict[str, Any]) -> str:
    kind = "quick smoke run (`--quick`)" if results["quick"] else "full run"
    lines = [
        "# clerk-sync benchmarks",
        "",
        f"{kind}, {results['started_at']} → {results['finished_at']} "
        f"({results['seconds'] / 60:.1f} min). Ratios are clerk-sync over a baseline measured "
        "in the same run; medians over repeats, [lowest-highest] per-repeat values.",
        "",
        machine_text(results),
        "",
        *(
            ["**Interrupted**: only the benchmarks below finished.", ""]
            if results["interrupted"]
            else []
        ),
        summary_table(results),
        "",
    ]
    for bench in results["benchmarks"]:
        lines += [f"## {bench['title']} (`--only {bench['name']}`)", "", bench["description"], ""]
        if bench["error"]:
            lines += [f"**Error:** {bench['error']}", ""]
        if bench["details"].get("markdown"):
            # A benchmark's own table (``hacks``: one row per hack), before its measures.
            lines += [*bench["details"]["markdown"], ""]
        if bench["measures"]:
            lines += ["| measure | median | min | max | repeats |", "|---|---|---|---|---|"]
            for measure in bench["measures"]:
                unit = measure["unit"]
                lines.append(
                    f"| {measure['label']} | {_number(measure['median'])} {unit} | "
                    f"{_number(measure['min'])} | {_number(measure['max'])} | "
                    f"{measure['repeats']} |"
                )
            lines.append("")
        for note in bench["notes"]:
            lines += [f"- {note}"]
        if "profile" in bench["details"]:
            lines += _profile_text(bench["details"]["profile"])
        took = f"Took {bench['seconds']:.0f} s"
        machine_load = bench["details"].get("load")
        if machine_load:
            took += (
                f"; load average {machine_load['before']['load_1m']} before, "
                f"{machine_load['after']['load_1m']} after"
            )
        lines.append(took + ".")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput and latency of every configuration, and worker memory during the drains."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    throughput: list[tuple[str, dict[str, Any], bool]] = []
    latency: list[tuple[str, dict[str, Any], bool]] = []
    curves: dict[str, list[list[float]]] = {}
    for bench in results["benchmarks"]:
        baselines = {ratio["baseline"] for ratio in bench["ratios"]}
        compared = baselines | {ratio["subject"] for ratio in bench["ratios"]}
        for measure in bench["measures"]:
            if not measure["values"] or measure["label"] not in compared:
                continue
            label = f"{bench['name']}: {measure['label']}"
            entry = (label, measure, measure["label"] in baselines)
            if measure["unit"] in THROUGHPUT_UNITS:
                throughput.append(entry)
            elif measure["unit"] == "ms":
                latency.append(entry)
        for size in ("small", "large"):
            memory = (
                bench["details"].get(size, {}).get("memory_mb")
                if bench["name"] == "backlog"
                else None
            )
            if memory:
                curves[f"{bench['details'][size]['events']:,} events"] = memory

    panels = [panel for panel in (throughput, latency) if panel] + ([curves] if curves else [])
    if not panels:
        return
    heights = [
        max(2.0, 0.45 * len(panel) + 1.2) if isinstance(panel, list) else 3.2 for panel in panels
    ]
    figure, axes = plt.subplots(
        len(panels), 1, figsize=(11, sum(heights)), gridspec_kw={"height_ratios": heights}
    )
    axes_list = list(axes) if len(panels) > 1 else [axes]
    index = 0
    for entries, title, unit in (
        (throughput, "Throughput", "per second"),
        (latency, "Latency and per-event cost", "ms"),
    ):
        if not entries:
            continue
        axis = axes_list[index]
        index += 1
        names = [name for name, _, _ in entries][::-1]
        medians = [measure["median"] for _, measure, _ in entries][::-1]
        lows = [measure["median"] - measure["min"] for _, measure, _ in entries][::-1]
        highs = [measure["max"] - measure["median"] for _, measure, _ in entries][::-1]
        colours = ["#9aa5b1" if baseline else "#2f6fb0" for _, _, baseline in entries][::-1]
        axis.barh(names, medians, xerr=[lows, highs], color=colours, capsize=3)
        for position, (value, (_, measure, _)) in enumerate(
            zip(medians, entries[::-1], strict=True)
        ):
            axis.text(
                measure["max"],
                position,
                f"  {_number(value)} {measure['unit']}",
                va="center",
                fontsize=8,
            )
        if min(medians) > 0 and max(medians) / min(medians) > 20:
            axis.set_xscale("log")
            title += " (log scale)"
        axis.set_title(title)
        axis.margins(x=0.15)
        axis.set_xlabel(unit)
        axis.tick_params(axis="y", labelsize=8)
    if curves:
        axis = axes_list[index]
        for name, points in curves.items():
            axis.plot(
                [point[0] for point in points], [point[1] for point in points], label=f"RSS, {name}"
            )
            axis.plot(
                [point[0] for point in points],
                [point[2] for point in points],
                linestyle="--",
                label=f"PSS, {name}",
            )
        axis.set_title("Worker process tree memory during the backlog drains")
        axis.set_xlabel("seconds since the worker started")
        axis.set_ylabel("MB")
        axis.legend(fontsize=8)
    figure.suptitle(
        "clerk-sync benchmarks: blue = clerk-sync, grey = baseline of the same run; "
        "bar = median, whiskers = min-max over repeats",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(results: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "results.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md_path = directory / "results.md"
    md_path.write_text(markdown(results))
    png_path = directory / "throughput.png"
    plot(results, png_path)
    return [json_path, md_path, png_path]
