"""Integration check: the polyvis plugin under the real lmms-eval 0.7.3 (docs/evaluation.md).

    python3 benchmarks/lmms_eval_check.py                  # venv in /tmp/lmms-venv, reused if built
    python3 benchmarks/lmms_eval_check.py --fresh --venv /tmp/other-venv --work /tmp/other-work

1. Builds its own virtual environment: torch first (`torch==2.13.0`: the CPU wheel this machine
   keeps on disk), then lmms-eval pinned with `filelock<4` and torch held at the installed
   build, torchvision removed (PyPI's is a CUDA build whose import breaks transformers; lmms-eval's
   core never imports it), then this repository editable.
2. In that venv: a tiny random polyvis model (configs/nano-tiny.yaml), synthetic chart and scene
   records, and an --include_path folder with two tasks: `polyvis_check_gen` (generate_until)
   and `polyvis_check_mc` (multiple_choice), plus each option's mean loss computed directly.
3. Runs `polyvis eval` and `python -m lmms_eval --model polyvis ...` on each task, and compares:
   generation answers identical to `polyvis eval`'s; multiple choice picked by lmms-eval's own
   scorer (argmin) equal to the option with the lowest mean loss.

lmms-eval exits 0 even when evaluation fails, so each run is judged by its results and samples
files only. Prints PASS / FAIL lines and the time taken; exit status 0 only when all pass.
This file runs on the standard library; its `_prepare` step runs inside the venv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LMMS_EVAL = "0.7.3"
TORCH = "2.13.0"
GEN_TASK, MC_TASK = "polyvis_check_gen", "polyvis_check_mc"
MAX_NEW_TOKENS = 8
LOSS_TOL = 1e-4  # the plugin batches and pads; the direct computation does neither

# lmms-eval 0.7.3 stringifies every non-text model output (api/instance.py,
# unwrap_generation_output: `return str(output), None`), so loglikelihood's (loss, is_greedy)
# reaches the multiple-choice scorer as "(5.1, False)" and `lls, is_greedy = zip(*results)`
# fails for every model. Put on PYTHONPATH for the multiple-choice run, this passes the pair on.
PATCH = '''"""lmms-eval 0.7.3 workaround, written by benchmarks/lmms_eval_check.py."""
import lmms_eval.api.instance as _instance

_unwrap = _instance.unwrap_generation_output


def unwrap_generation_output(output):
    if isinstance(output, tuple) and len(output) == 2 and not isinstance(output[0], str):
        return output, None  # loglikelihood's (loss, is_greedy): keep it a pair
    return _unwrap(output)


_instance.unwrap_generation_output = unwrap_generation_output
'''

UTILS = """from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc):
    return doc["question"]


def pick_agreement(items):
    # `f1` is logged per doc as (gold, pred), lmms-eval's own pick; its default aggregation is
    # binary F1 (fails past two options), so this one gives the share of picks equal to gold.
    return sum(int(g == p) for g, p in items) / max(len(items), 1)
"""

TASK_HEAD = """task: {task}
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
"""
GEN_YAML = """output_type: generate_until
doc_to_target: answer
generation_kwargs: {{max_new_tokens: {new}, temperature: 0, do_sample: false, until: []}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
"""
MC_YAML = """output_type: multiple_choice
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: f1, aggregation: !function utils.pick_agreement, higher_is_better: true}}
"""


# ---- inside the venv: model, data, tasks and the direct multiple-choice losses ---------------
def prepare(work: Path) -> None:
    """Write work/model, work/data, work/tasks and work/expected_mc.json (runs in the venv)."""
    import random

    import torch

    from polyvis.config import load_config
    from polyvis.data.images import load_image
    from polyvis.data.synthetic import generate
    from polyvis.data.template import prompt_ids
    from polyvis.models.build import build_model, save_model

    torch.manual_seed(0)
    model, processor = build_model(load_config(ROOT / "configs" / "nano-tiny.yaml"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large random LM weights: answers that depend on the prompt
        for name, w in model.named_parameters():
            if w.dim() >= 2 and ("language_model" in name or "adapter" in name):
                w.copy_(torch.randn(w.shape, generator=g) * 0.5)
    save_model(model, processor, work / "model")
    model.eval()

    generate(["chart", "scene"], n=20, seed=1, out=work / "data", image_size=32, progress=False)

    def records(split: str) -> list[dict]:
        out = []
        for fam in ("chart", "scene"):
            for line in (work / "data" / fam / f"{split}.jsonl").read_text().splitlines():
                rec = json.loads(line)
                question = rec["conversations"][0]["value"]
                assert question.startswith("<image>\n"), rec["id"]  # the plugin's marker layout
                rec["question"] = question[len("<image>\n") :]
                rec["answer"] = rec["conversations"][1]["value"]
                rec["path"] = str(work / "data" / fam / rec["image"])
                out.append(rec)
        return out

    tasks = work / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(UTILS)
    gen = [
        {"id": r["id"], "image": r["path"], "question": r["question"], "answer": r["answer"]}
        for r in records("val")
    ]
    _write_jsonl(tasks / "gen.jsonl", gen)

    # Multiple choice: each short answer against up to 3 others of the same family and question.
    recs = records("val") + records("test")
    pool: dict[tuple[str, str], set[str]] = {}
    for r in recs:
        pool.setdefault((r["family"], r["task"]), set()).add(r["answer"])
    rng = random.Random(0)
    mc = []
    for r in recs:
        others = sorted(pool[(r["family"], r["task"])] - {r["answer"]})
        if not others or "\n" in r["answer"] or len(r["answer"]) > 12:
            continue
        choices = [r["answer"], *rng.sample(others, min(3, len(others)))]
        rng.shuffle(choices)
        doc = {k: r[k] for k in ("id", "question")}
        mc.append(dict(doc, image=r["path"], choices=choices, gold=choices.index(r["answer"])))
    _write_jsonl(tasks / "mc.jsonl", mc)
    for task, data, body in ((GEN_TASK, "gen", GEN_YAML), (MC_TASK, "mc", MC_YAML)):
        head = TASK_HEAD.format(task=task, data=json.dumps(str(tasks / f"{data}.jsonl")))
        (tasks / f"{task}.yaml").write_text(head + body.format(new=MAX_NEW_TOKENS))

    # Each option's mean loss, one plain forward each: lmms-eval's request is (question,
    # " " + option) (target_delimiter " "), with the prompt polyvis eval would build.
    tok = processor.tokenizer
    expected = []
    for doc in mc:
        prompt = prompt_ids(processor, [{"role": "user", "content": "<image>\n" + doc["question"]}])
        pixels = processor.preprocess_images([load_image(doc["image"])])
        losses, sums = [], []
        for choice in doc["choices"]:
            cont = tok(" " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + cont]), pixel_values=pixels).logits
            logp = torch.log_softmax(logits[0, len(prompt) - 1 : -1].float(), -1)
            total = float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum())
            losses.append(-total / len(cont))
            sums.append(total)
        expected.append({"id": doc["id"], "losses": losses, "sums": sums})
    _write_jsonl(work / "expected_mc.jsonl", expected)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# ---- outside: venv, runs, comparisons --------------------------------------------------------
class Check:
    def __init__(self) -> None:
        self.failed = 0

    def report(self, ok: bool, name: str, detail: str) -> None:
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)

    def run(self, name: str, res, rows, n: int, metric: str, rc: int, took: float) -> bool:
        """An lmms-eval run passes on its files alone: its exit status is 0 even on failure."""
        ok = res is not None and metric in res and rows is not None and len(rows) == n
        where = "in" if res and metric in res else "missing from"
        got = f"{len(rows or [])} samples, {metric} {where} results"
        self.report(ok, name, f"{got}, {n} docs (exit {rc}, {took:.0f} s)")
        return ok


def sh(cmd: list[str], log: Path, env: dict | None = None, must: bool = False) -> int:
    """Run cmd with its output appended to log; with must, a failure ends the check."""
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc and must:
        raise SystemExit(f"FAIL `{' '.join(cmd)}` exited {rc}; see {log}")
    return rc


def build_venv(venv: Path, python: str, fresh: bool, log: Path) -> tuple[Path, str]:
    """The venv's python, and what was done ("reused" or "built in N s")."""
    py, stamp = venv / "bin" / "python", venv / ".polyvis-lmms-check.json"
    spec = {"torch": TORCH, "lmms_eval": LMMS_EVAL, "repo": str(ROOT)}
    if not fresh and stamp.exists() and json.loads(stamp.read_text()) == spec:
        return py, "reused (--fresh rebuilds it)"
    t0 = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    sh([python, "-m", "venv", str(venv)], log, must=True)
    sh([*pip, "--upgrade", "pip"], log, must=True)
    sh([*pip, f"torch=={TORCH}"], log, must=True)  # first, so nothing else picks a torch
    version = subprocess.run(
        [str(py), "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    ).stdout.strip()
    constraints = venv / "constraints.txt"  # torch stays the build just installed
    constraints.write_text(f"torch=={version}\nfilelock<4\n")
    sh([*pip, "-c", str(constraints), f"lmms-eval=={LMMS_EVAL}"], log, must=True)
    sh([str(py), "-m", "pip", "uninstall", "-q", "-y", "torchvision"], log, must=True)
    sh([*pip, "-c", str(constraints), "-e", str(ROOT)], log, must=True)
    stamp.write_text(json.dumps(spec))
    return py, f"built in {time.monotonic() - t0:.0f} s"


def venv_facts(py: Path) -> dict:
    code = (
        "import importlib.metadata as m, importlib.util as u, json, torch, transformers, filelock\n"
        "import lmms_eval.api.task, polyvis.eval.lmms as p\n"
        "p.PolyVisLMMs\n"
        "print(json.dumps({'torch': torch.__version__, 'lmms_eval': m.version('lmms-eval'),"
        " 'filelock': m.version('filelock'), 'transformers': transformers.__version__,"
        " 'torchvision': u.find_spec('torchvision') is not None}))"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def lmms_outputs(out: Path, task: str) -> tuple[dict | None, list[dict] | None]:
    """The results.json's entry for task and the samples, or None where missing or empty."""
    results = sorted(out.glob("**/*_results.json"))
    samples = sorted(out.glob(f"**/*_samples_{task}.jsonl"))
    res = json.loads(results[-1].read_text()).get("results", {}).get(task) if results else None
    rows = _read_jsonl(samples[-1]) if samples else None
    return res or None, rows or None


def run_lmms(py: Path, work: Path, task: str, name: str, env: dict, patch: bool, limit=None):
    out = work / f"lmms-{name}"
    cmd = [str(py), "-m", "lmms_eval", "--model", "polyvis", "--model_args"]
    cmd += [f"pretrained={work / 'model'}", "--tasks", task, "--include_path", str(work / "tasks")]
    cmd += ["--output_path", str(out), "--log_samples", "--batch_size", "4"]
    if limit:
        cmd += ["--limit", str(limit)]
    run_env = dict(env, PYTHONPATH=str(work / "patch")) if patch else env
    t0 = time.monotonic()
    rc = sh(cmd, work / f"lmms-{name}.log", run_env)
    return (*lmms_outputs(out, task), rc, time.monotonic() - t0)


def check_generation(check: Check, work: Path, res, rows, rc: int, took: float) -> None:
    docs = _read_jsonl(work / "tasks" / "gen.jsonl")
    if not check.run("generation run", res, rows, len(docs), "exact_match,none", rc, took):
        return
    answers = {r["id"]: r["prediction"] for r in _read_jsonl(work / "polyvis-eval/answers.jsonl")}
    same, diff = 0, []
    for row in rows:
        doc = docs[row["doc_id"]]
        lmms = row["filtered_resps"]
        lmms = lmms[0] if isinstance(lmms, list) else lmms
        if lmms == answers.get(doc["id"]):
            same += 1
        else:
            diff.append(f"{doc['id']}: {lmms!r} != {answers.get(doc['id'])!r}")
    distinct = len(set(answers.values()))
    check.report(
        same == len(docs) and distinct > 1,
        "generation answers",
        f"{same}/{len(docs)} identical to polyvis eval ({distinct} distinct answers)"
        + ("; " + "; ".join(diff[:3]) if diff else ""),
    )


def check_choice(check: Check, work: Path, res, rows, rc: int, took: float) -> None:
    docs = _read_jsonl(work / "tasks" / "mc.jsonl")
    expected = _read_jsonl(work / "expected_mc.jsonl")
    if not check.run("multiple-choice run", res, rows, len(docs), "acc,none", rc, took):
        return
    picked, loss_ok, flips, bad = 0, 0, 0, []
    for row in rows:
        want = expected[row["doc_id"]]
        gold, pred = (int(v) for v in row["f1"])  # lmms-eval's own (gold, argmin pick)
        losses = want["losses"]
        best = min(range(len(losses)), key=losses.__getitem__)
        if pred == best:
            picked += 1
        else:
            bad.append(f"{want['id']}: picked {pred}, lowest loss {best} {losses}")
        logged = [float(pair[0]) for pair in row["filtered_resps"]]
        loss_ok += all(abs(a - b) <= LOSS_TOL * max(1.0, abs(b)) for a, b in zip(logged, losses))
        # The quantity the plugin once returned (summed log-probability) under the same argmin.
        flips += min(range(len(losses)), key=want["sums"].__getitem__) != best
        if row["acc"] != float(pred == gold):
            bad.append(f"{want['id']}: acc {row['acc']} but pick {pred}, gold {gold}")
    n = len(rows)
    check.report(
        picked == n and not bad,
        "multiple-choice picks",
        f"{picked}/{n} docs: lmms-eval's pick is the option with the lowest mean loss"
        f" (acc {res['acc,none']:.3f}); a summed log-probability would have picked another"
        f" option on {flips}" + ("; " + "; ".join(bad[:3]) if bad else ""),
    )
    check.report(loss_ok == n, "multiple-choice losses", f"{loss_ok}/{n} docs within {LOSS_TOL}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--venv", type=Path, default=Path("/tmp/lmms-venv"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/lmms-eval-check"), help="wiped first")
    ap.add_argument("--fresh", action="store_true", help="rebuild the venv even if it is ready")
    ap.add_argument("--python", default=sys.executable, help="interpreter the venv is made from")
    ap.add_argument("--no-probe", action="store_true", help="skip the unpatched multiple choice")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "patch").mkdir(parents=True)
    (work / "patch" / "sitecustomize.py").write_text(PATCH)
    check = Check()

    py, how = build_venv(args.venv.resolve(), args.python, args.fresh, work / "venv.log")
    facts = venv_facts(py)
    check.report(
        facts.get("lmms_eval") == LMMS_EVAL
        and facts.get("torch", "").startswith(TORCH)
        and int(facts.get("filelock", "9").split(".")[0]) < 4
        and facts.get("torchvision") is False,
        "venv",
        f"{args.venv} {how}: {json.dumps(facts)}",
    )
    if check.failed:
        return 1

    env = dict(os.environ, HF_HOME=str(work / "hf"), POLYVIS_CACHE=str(work / "cache"))
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["WANDB_MODE"] = "disabled"
    env.pop("PYTHONPATH", None)
    cmd = [str(py.parent / "polyvis"), "eval", str(work / "model"), "--out"]
    cmd += [str(work / "polyvis-eval"), "--data", str(work / "data/chart/val.jsonl")]
    cmd += [str(work / "data/scene/val.jsonl"), "--max-new-tokens", str(MAX_NEW_TOKENS)]
    cmd += ["--device", "cpu", "--no-progress"]
    steps = {"prepare": [str(py), __file__, "_prepare", str(work)], "polyvis-eval": cmd}
    for name, cmd in steps.items():
        t = time.monotonic()
        rc = sh(cmd, work / f"{name}.log", env)
        check.report(rc == 0, name, f"exit {rc} ({time.monotonic() - t:.0f} s)")
        if rc:
            return 1

    check_generation(check, work, *run_lmms(py, work, GEN_TASK, "gen", env, patch=False))
    if not args.no_probe:  # tells when a later lmms-eval no longer needs the workaround
        res, _, _, took = run_lmms(py, work, MC_TASK, "mc-unpatched", env, False, limit=2)
        log = (work / "lmms-mc-unpatched.log").read_text(errors="replace")
        bug = "too many values to unpack" in log
        state = "no results" + (" (its ValueError)" if bug else "") if res is None else "it works"
        print(f"NOTE lmms-eval bug probe, multiple choice unpatched ({took:.0f} s): {state}")
    check_choice(check, work, *run_lmms(py, work, MC_TASK, "mc", env, patch=True))
    verdict = "PASS" if not check.failed else f"FAIL ({check.failed} failed)"
    print(f"{verdict}: lmms-eval check took {time.monotonic() - t0:.0f} s; files in {work}")
    return 1 if check.failed else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_prepare":
        prepare(Path(sys.argv[2]))
    else:
        sys.exit(main())
