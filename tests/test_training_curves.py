"""`maskae plot --log`: the figure holds exactly the logged values, against step and wall-clock time, one
line per run; an old log without wall-clock times still plots against the step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from maskae import DataError
from maskae.cli import main
from maskae.training.curves import CURVES, plot_training_curves, run_series
from maskae.training.logs import read_log


def write_run(path: Path, steps: list[int], timed: bool = True) -> Path:
    path.mkdir(parents=True)
    with open(path / "log.jsonl", "w") as log:
        for step in steps:
            record = {"step": step, "loss": 9.0 - step / 10, "lr": 1e-3 * step / steps[-1],
                      "tokens_per_s": 1000.0 + step, "grad_norm": 1.0}
            log.write(json.dumps({**record, **({"elapsed_s": 0.5 * step} if timed else {})}) + "\n")
    with open(path / "eval_log.jsonl", "w") as log:
        for step in steps[1::2]:
            record = {"step": step, "eval_masked_accuracy": step / 100, "eval_masked_loss": 5.0}
            log.write(json.dumps({**record, **({"elapsed_s": 0.5 * step + 0.1} if timed else {})}) + "\n")
        log.write('{"step": 99, "eval_masked_acc')  # a line cut short by a kill ends the log
    return path


def test_axes_hold_the_logged_values(tmp_path):
    a = write_run(tmp_path / "a", [10, 20, 30, 40])
    b = write_run(tmp_path / "b", [5, 10], timed=False)
    output, figure = plot_training_curves([a, b], tmp_path / "figures" / "curves.png")
    assert output.is_file() and output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = np.array(figure.axes).reshape(len(CURVES), 2)
    logs = {run.name: [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] for run in (a, b)}
    for row, (file_name, key, _) in enumerate(CURVES):
        by_step, by_time = axes[row]
        assert [line.get_label() for line in by_step.lines] == ["a", "b"]
        assert [line.get_label() for line in by_time.lines] == ["a"]  # b logged no wall-clock time
        for line in by_step.lines:
            records = [r for r in read_log(tmp_path / line.get_label() / file_name) if key in r]
            assert list(line.get_xdata()) == [r["step"] for r in records]
            assert list(line.get_ydata()) == [r[key] for r in records]
        records = [r for r in read_log(a / file_name) if key in r]
        assert list(by_time.lines[0].get_xdata()) == [r["elapsed_s"] for r in records]
        assert list(by_time.lines[0].get_ydata()) == [r[key] for r in records]
    assert [r["loss"] for r in logs["a"]] == list(axes[0][0].lines[0].get_ydata())
    assert list(axes[1][0].lines[0].get_ydata()) == [0.2, 0.4]  # the truncated eval line is not plotted


def test_series_of_a_run(tmp_path):
    series = run_series(write_run(tmp_path / "run", [1, 2]))
    assert series["loss"] == {"step": [1, 2], "value": [8.9, 8.8], "elapsed_s": [0.5, 1.0]}
    assert series["eval_masked_accuracy"]["value"] == [0.02]


def test_cli_draws_curves_and_keeps_the_map_mode_strict(tmp_path, capsys):
    a, b = write_run(tmp_path / "x" / "final", [1, 2]), write_run(tmp_path / "y" / "final", [1, 2])
    assert main(["plot", "--log", str(a), str(b), "--output", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").is_file()
    assert main(["plot", "--log", str(tmp_path / "missing")]) == 2
    assert "has no log.jsonl" in capsys.readouterr().err
    assert main(["plot", "some-model", "--output", str(tmp_path / "m.png")]) == 2
    assert "needs MODEL, --data and --output" in capsys.readouterr().err
    with pytest.raises(DataError, match="no run"):
        plot_training_curves([], tmp_path / "none.png")


def test_runs_with_the_same_name_get_their_parents_in_the_legend(tmp_path):
    a, b = write_run(tmp_path / "x" / "final", [1, 2]), write_run(tmp_path / "y" / "final", [1, 2])
    _, figure = plot_training_curves([a, b], tmp_path / "c.png")
    assert [line.get_label() for line in figure.axes[0].lines] == ["x/final", "y/final"]


def test_export_puts_the_curves_into_the_model_card(tmp_path):
    from huggingface_hub import ModelCard
    from transformers import BertConfig, BertTokenizerFast

    from maskae import MaskAEConfig, MaskAEForMaskedLM

    run = write_run(tmp_path / "run", [1, 2, 3])
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat"]
    BertTokenizerFast(vocab={word: index for index, word in enumerate(words)}).save_pretrained(run)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    MaskAEForMaskedLM(MaskAEConfig(base_config=config, split_layer=1)).save_pretrained(run)
    for flags, out in (([], "hub"), (["--sentence-transformers"], "st")):
        assert main(["--quiet", "export", str(run), "--out", str(tmp_path / out), *flags]) == 0
        assert (tmp_path / out / "plots" / "training_curves.png").is_file()
        assert "![training curves](plots/training_curves.png)" in ModelCard.load(tmp_path / out / "README.md").text
