#!/usr/bin/env python3
"""Does pseudo-code help? The paper's comparison on SmolLM2-135M-Instruct, end to end, resumable.

Stages, each skipped when its output is complete (a stopped run goes on with the same command):
  prompts     our own prompts with IFEval-style constraints (make_prompts.py)
  sample-1    K answers a prompt, sampled (pctrain generate --samples K)
  score-1     each answer checked by pctrain's strict IFEval checkers
  sample-2    K more answers for the prompts with no passing answer yet; score-2
  select      one passing answer a prompt; a held-out slice; pseudo-code from the constraints
  sweep       the nl arm at several learning rates, held-out loss after each epoch
  train       the arms nl, nl-pc and the blend, at the chosen learning rate and epochs
  ifeval      each arm (and the base model) answers IFEval greedily; pseudo-code stripped; scored
  heldout     each arm's loss on the held-out records
then analyze.py writes the results, the answers and the chart.

    python3 scripts/experiment/experiment.py --model DIR --ifeval FILE --work DIR --results DIR
"""

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import time

from make_prompts import KINDS, TOPICS

SAMPLES = 4
TEMPERATURE = 0.8
SAMPLE_TOKENS = 256
HELD_OUT_RECORDS = 200
MIN_TRAIN_RECORDS = 800
LEARNING_RATES = [1e-4, 3e-4, 1e-3]
MAX_EPOCHS = 2
SEQ_LEN = 1024
BATCH = 4
SEED = 1
WARMUP = 10
IFEVAL_TOKENS = 768
ARMS = {"nl": "nl", "nl-pc": "nl-pc", "blend": "nl:0.5,nl-pc:0.5"}
LORA = ["--lora-r", "16", "--lora-alpha", "32", "--lora-targets", "all"]
# What a work folder's files depend on: a rerun with other values is refused.
SETTINGS = {
    "samples": SAMPLES, "temperature": TEMPERATURE, "sample_tokens": SAMPLE_TOKENS,
    "held_out_records": HELD_OUT_RECORDS, "learning_rates": LEARNING_RATES, "max_epochs": MAX_EPOCHS,
    "seq_len": SEQ_LEN, "batch": BATCH, "seed": SEED, "warmup": WARMUP, "ifeval_tokens": IFEVAL_TOKENS,
    "arms": ARMS, "lora": LORA,
}


class Experiment:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.work)
        self.pctrain = os.path.abspath(args.pctrain)
        self.model = os.path.abspath(args.model)
        self.ifeval = os.path.abspath(args.ifeval)
        os.makedirs(self.work, exist_ok=True)
        self.stages_path = self.path("stages.json")
        # More prompts may be asked for later: the first ones are the same, so every stage
        # resumes as if the run had started with all of them.
        settings = {"model": self.model, "ifeval": self.ifeval, **SETTINGS}
        saved = read_json(self.path("settings.json"), None)
        if saved is None:
            write_json(self.path("settings.json"), settings)
        elif saved != settings:
            changed = sorted(k for k in settings.keys() | saved.keys() if settings.get(k) != saved.get(k))
            sys.exit(f"{self.work} holds a run with other settings ({', '.join(changed)} differ): "
                     "give another --work folder, or remove it to start afresh")

    def path(self, name):
        return os.path.join(self.work, name)

    def record(self, stage, command, seconds):
        """Adds a sitting's time to a stage (a resumed stage sums its sittings)."""
        self.stages = read_json(self.stages_path, {})
        s = self.stages.setdefault(stage, {"seconds": 0.0, "sittings": 0, "commands": []})
        s["seconds"] += seconds
        s["sittings"] += 1
        if command not in s["commands"]:
            s["commands"].append(command)
        s["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json(self.stages_path, self.stages)

    def run(self, stage, argv, stdout=None):
        """Runs a command of `stage`, timed; its stdout's last line is returned."""
        shown = " ".join(quote(a) for a in argv)
        print(f"[{stage}] {shown}", file=sys.stderr, flush=True)
        started = time.time()
        try:
            out = subprocess.run(argv, cwd=self.work, check=True, stdout=subprocess.PIPE, text=True)
        finally:
            # A sitting that is stopped counts too: the stage resumes and sums its sittings.
            self.record(stage, shown, time.time() - started)
        lines = [l for l in out.stdout.splitlines() if l.strip()]
        return lines[-1] if lines else ""

    def pc(self, *argv):
        return [self.pctrain, *argv]

    # -- data -------------------------------------------------------------------------------

    def prompts(self):
        """The prompts; asked for more, the file grows (the generator's first prompts are the same
        whatever the count, which is checked)."""
        have = read_jsonl(self.path("prompts.jsonl")) if os.path.exists(self.path("prompts.jsonl")) else []
        if len(have) == self.args.prompts:
            return
        if len(have) > self.args.prompts:
            sys.exit(f"{self.work} holds {len(have)} prompts, more than --prompts {self.args.prompts}")
        script = os.path.join(os.path.dirname(__file__), "make_prompts.py")
        self.run("prompts", [sys.executable, script, "--ifeval", self.ifeval, "--count",
                             str(self.args.prompts), "--seed", str(SEED), "--output", "prompts.jsonl",
                             "--stats", "prompts.stats.json"])
        assert read_jsonl(self.path("prompts.jsonl"))[:len(have)] == have, "the prompts changed"

    def sample(self, round_, data, seed):
        """K sampled answers to each record of `data` (resumed when stopped), then scored."""
        out, report = f"samples-{round_}.jsonl", f"scored-{round_}.jsonl"
        if count_lines(self.path(out)) < count_lines(self.path(data)) * SAMPLES or not os.path.exists(self.path(report)):
            self.run(f"sample-{round_}", self.pc(
                "generate", "--base", self.model, "--data", data, "--samples", str(SAMPLES),
                "--temperature", str(TEMPERATURE), "--max-new-tokens", str(SAMPLE_TOKENS),
                "--batch-size", "64", "--seed", str(seed), "--output", out))
            self.run(f"score-{round_}", self.pc(
                "eval", "--task", "ifeval", "--task-data", data, "--responses", out,
                "--report", report))
        return read_jsonl(self.path(out)), read_jsonl(self.path(report))

    def select(self):
        """Rounds of sampling, then one passing answer a prompt, split and given pseudo-code."""
        prompts = read_jsonl(self.path("prompts.jsonl"))
        answers1, scored1 = self.sample(1, "prompts.jsonl", SEED)
        passed = first_passing(answers1, scored1)
        failing = [p for p in prompts if p["key"] not in passed]
        # Grown prompts add failing ones at the end; earlier ones keep their places (and answers).
        had = read_jsonl(self.path("prompts-2.jsonl")) if os.path.exists(self.path("prompts-2.jsonl")) else []
        assert failing[:len(had)] == had, "the second round's prompts changed"
        if len(failing) > len(had):
            write_jsonl(self.path("prompts-2.jsonl"), failing)
        answers2, scored2 = self.sample(2, "prompts-2.jsonl", SEED + 1) if failing else ([], [])
        passed2 = first_passing(answers2, scored2)
        rates = pass_rates(prompts, scored1, scored2)
        write_json(self.path("pass-rates.json"), rates)
        if os.path.exists(self.path("train-pc.jsonl")) and os.path.exists(self.path("heldout-pc.jsonl")):
            return
        records = []
        for p in prompts:
            answer = passed.get(p["key"]) or passed2.get(p["key"])
            if answer is not None:
                assert answer["prompt"] == p["prompt"], f"{p['key']}: the answer is to another prompt"
                records.append({**p, "response": answer["response"]})
        if len(records) < MIN_TRAIN_RECORDS + HELD_OUT_RECORDS:
            sys.exit(f"only {len(records)} prompts have a passing answer; {MIN_TRAIN_RECORDS + HELD_OUT_RECORDS} "
                     "are needed: make more prompts (--prompts)")
        # Held out by base task, so that no held-out prompt shares its task with a trained one.
        by_task = {}
        for r in records:
            by_task.setdefault(base_task(r["prompt"]), []).append(r)
        tasks = sorted(by_task)
        random.Random(SEED).shuffle(tasks)
        heldout, train = [], []
        for t in tasks:
            (heldout if len(heldout) < HELD_OUT_RECORDS else train).extend(by_task[t])
        random.Random(SEED).shuffle(train)
        write_jsonl(self.path("heldout.jsonl"), heldout)
        write_jsonl(self.path("train.jsonl"), train)
        for part in ["train", "heldout"]:
            self.run("pseudo-code", self.pc("data", "pseudo-code", "--from-constraints", "--data",
                                            f"{part}.jsonl", "--output", f"{part}-pc.jsonl"))

    # -- training ---------------------------------------------------------------------------

    def steps_per_epoch(self, mix):
        """Optimizer steps an epoch of the training records takes in `mix` (packed rows / batch)."""
        out = subprocess.run(self.pc("data", "stats", "--data", "train-pc.jsonl", "--mix", mix,
                                     "--tokenizer", self.model, "--seq-len", str(SEQ_LEN),
                                     "--seed", str(SEED), "--json"),
                             cwd=self.work, check=True, stdout=subprocess.PIPE, text=True).stdout
        return math.ceil(json.loads(out)["rows"] / BATCH)

    def train(self, stage, name, mix, lr, epochs):
        """Trains (or resumes) the run `runs/NAME`; its metrics lines."""
        folder = os.path.join("runs", name)
        metrics = os.path.join(self.work, folder, "metrics.jsonl")
        done = os.path.exists(os.path.join(self.work, folder, "adapter", "adapter_model.safetensors"))
        if not done:
            every = self.steps_per_epoch(mix)
            argv = self.pc("--base", self.model, "--data", "train-pc.jsonl", "--mix", mix, *LORA,
                           "--lr", str(lr), "--epochs", str(epochs), "--seq-len", str(SEQ_LEN),
                           "--batch-size", str(BATCH), "--seed", str(SEED), "--warmup-steps", str(WARMUP),
                           "--eval-data", "heldout-pc.jsonl", "--eval-every", str(every),
                           "--save-every", str(max(1, every // 2)), "--keep-last", "1",
                           "--output", folder)
            has_checkpoint = os.path.isdir(os.path.join(self.work, folder)) and any(
                d.startswith("checkpoint-") for d in os.listdir(os.path.join(self.work, folder)))
            if has_checkpoint:
                argv.append("--resume")
            self.run(stage, argv)
        return read_jsonl(metrics)

    def sweep(self):
        """The nl arm at each learning rate; the (rate, epochs) with the lowest held-out loss."""
        results = []
        every = self.steps_per_epoch("nl")
        for lr in LEARNING_RATES:
            metrics = self.train("sweep", f"sweep-nl-lr{lr:g}", "nl", lr, MAX_EPOCHS)
            evals = [m for m in metrics if "eval_loss" in m]
            for m in evals:
                epochs = m["step"] / every
                if m["step"] % every == 0 or m is evals[-1]:
                    results.append({"lr": lr, "step": m["step"], "epochs": round(epochs, 3),
                                    "heldout_loss": m["eval_loss"]})
        best = min(results, key=lambda r: r["heldout_loss"])
        chosen = {"lr": best["lr"], "epochs": max(1, round(best["epochs"])), "by": "lowest held-out loss of the nl arm",
                  "candidates": results}
        write_json(self.path("chosen.json"), chosen)
        return chosen

    def arms(self, chosen):
        lr, epochs = chosen["lr"], chosen["epochs"]
        folders = {}
        for arm, mix in ARMS.items():
            if arm == "nl" and epochs == MAX_EPOCHS:
                name = f"sweep-nl-lr{lr:g}"
            else:
                name = f"arm-{arm}"
                self.train(f"train-{arm}", name, mix, lr, epochs)
            folders[arm] = os.path.join("runs", name, "adapter")
        return folders

    # -- scoring ----------------------------------------------------------------------------

    def answer_ifeval(self, arm, adapter):
        out, report = f"ifeval-{arm}.jsonl", f"ifeval-{arm}.report.jsonl"
        if not os.path.exists(self.path(report)):
            model = ["--base", self.model] + (["--adapter", adapter] if adapter else [])
            self.run(f"ifeval-{arm}", self.pc("generate", *model, "--data", self.ifeval,
                                              "--max-new-tokens", str(IFEVAL_TOKENS), "--batch-size", "64",
                                              "--output", out))
            self.run(f"ifeval-{arm}", self.pc("eval", "--task", "ifeval", "--task-data", self.ifeval,
                                              "--responses", out, "--report", report))

    def heldout_loss(self, arm, adapter, mix):
        key = f"{arm}@{mix}"
        losses = read_json(self.path("heldout-losses.json"), {})
        if key not in losses:
            model = ["--base", self.model] + (["--adapter", adapter] if adapter else [])
            line = self.run("heldout", self.pc("eval", *model, "--data", "heldout-pc.jsonl", "--mix", mix,
                                               "--seq-len", str(SEQ_LEN)))
            losses[key] = json.loads(line)
            write_json(self.path("heldout-losses.json"), losses)

    def main(self):
        self.prompts()
        self.select()
        chosen = self.sweep()
        adapters = {"base": None, **self.arms(chosen)}
        for arm, adapter in adapters.items():
            self.answer_ifeval(arm, adapter)
        for arm, adapter in adapters.items():
            self.heldout_loss(arm, adapter, "nl")
            if arm != "base" and ARMS[arm] != "nl":
                self.heldout_loss(arm, adapter, ARMS[arm])
        write_json(self.path("arms.json"), {"adapters": adapters, "mixes": {"base": None, **ARMS},
                                            "ifeval_tokens": IFEVAL_TOKENS})


def first_passing(answers, scored):
    """Per prompt key, the first answer that ended by itself (not at the token budget) and passed
    every instruction strictly."""
    assert len(answers) == len(scored), f"{len(answers)} answers but {len(scored)} scored"
    by_prompt = {}
    for n, (a, s) in enumerate(zip(answers, scored)):
        assert a["prompt"] == s["prompt"] and a["sample"] == s["sample"], \
            f"answer {n + 1} ({a['id']}, sample {a['sample']}) and its score disagree"
        if all(s["strict"]) and a["new_tokens"] < SAMPLE_TOKENS and a["id"] not in by_prompt:
            by_prompt[a["id"]] = a
    return by_prompt


def base_task(prompt):
    """The base task a prompt of make_prompts.py starts with."""
    tasks = [p.format(t=t) for t in TOPICS for ps in KINDS.values() for p in ps]
    found = [t for t in tasks if prompt.startswith(t)]
    assert found, f"no base task starts {prompt[:60]!r}"
    return max(found, key=len)


def pass_rates(prompts, scored1, scored2):
    """How often samples pass, per round, within 4 and 8 samples, and by constraint count."""
    n = len(prompts)
    per_prompt = {}
    for s in scored1 + scored2:
        per_prompt.setdefault(s["prompt"], []).append(all(s["strict"]))
    counts = {p["prompt"]: len(p["instruction_id_list"]) for p in prompts}
    within4 = sum(any(v[:SAMPLES]) for v in per_prompt.values())
    within8 = sum(any(v) for v in per_prompt.values())
    by_count = {}
    for prompt, v in per_prompt.items():
        c = by_count.setdefault(str(counts[prompt]), {"prompts": 0, "passed_within_8": 0, "samples": 0, "passing_samples": 0})
        c["prompts"] += 1
        c["passed_within_8"] += any(v)
        c["samples"] += len(v)
        c["passing_samples"] += sum(v)
    return {
        "prompts": n,
        "round_1_samples": len(scored1),
        "round_1_sample_pass_rate": sum(all(s["strict"]) for s in scored1) / max(1, len(scored1)),
        "round_2_samples": len(scored2),
        "round_2_sample_pass_rate": sum(all(s["strict"]) for s in scored2) / max(1, len(scored2)),
        "prompts_passed_within_4": within4,
        "prompts_passed_within_8": within8,
        "share_passed_within_4": within4 / n,
        "share_passed_within_8": within8 / n,
        "by_constraint_count": by_count,
    }


def quote(a):
    return a if a and all(c.isalnum() or c in "-_./:=,@" for c in a) else json.dumps(a)


def count_lines(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for l in f if l.strip())


def read_jsonl(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{n}: not JSON: {e}")
    return rows


def write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def read_json(path, default):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="SmolLM2-135M-Instruct folder (get-smollm2.py)")
    ap.add_argument("--ifeval", required=True, help="IFEval's prompts (JSONL)")
    ap.add_argument("--work", required=True, help="where every stage's files go")
    ap.add_argument("--pctrain", required=True, help="the pctrain binary")
    ap.add_argument("--prompts", type=int, default=3600,
                    help="prompts to make (may grow between sittings: the first ones stay the same)")
    # A stop by SIGTERM ends the run as Ctrl-C does, so the sitting's time is recorded.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    Experiment(ap.parse_args()).main()


if __name__ == "__main__":
    main()
