"""maskae models as MTEB models: on a local MTEB STS task built from ../shared/data/stsb (no download), the
cosine Spearman that MTEB reports at layer 3 is the one `maskae evaluate --task sts` computes on the same
pairs; `--task mteb` prints the main scores and keeps MTEB's result files; bad task names and a missing
--tasks are one line. mteb's result cache points at a temporary folder, never ~/.cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskae.cli import main
from maskae.embeddings.embedder import Embedder
from maskae.errors import ConfigError
from maskae.evaluation.sts import evaluate_sts
from maskae.evaluation.tasks import read_sts

PAIRS = 300  # the first pairs of the STS-B test split


@pytest.fixture(scope="module")
def mteb(tmp_path_factory):
    """mteb, imported with its result cache (made at import) in a temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTEB_CACHE", str(tmp_path_factory.mktemp("mteb-cache")))
        yield pytest.importorskip("mteb")


@pytest.fixture(scope="module")
def stsb(shared_data) -> Path:
    return shared_data / "stsb" / "test.tsv"


@pytest.fixture(scope="module")
def local_task(mteb, stsb):
    """A factory of MTEB STS tasks that read the first PAIRS rows of the STS-B tsv, as maskae reads it."""
    import datasets
    from mteb.abstasks import AbsTaskSTS
    from mteb.abstasks.task_metadata import TaskMetadata

    class LocalSTSB(AbsTaskSTS):
        metadata = TaskMetadata(
            name="LocalSTSB", description="The first pairs of the STS-B test split, read from ../shared/data.",
            dataset={"path": "local/stsb", "revision": "local"},  # never fetched: load_data reads the file
            reference=None, type="STS", category="t2t", modalities=["text"], eval_splits=["test"],
            eval_langs=["eng-Latn"], main_score="cosine_spearman", date=None, domains=None, task_subtypes=None,
            license=None, annotations_creators=None, dialect=None, sample_creation=None, bibtex_citation=None,
        )

        def load_data(self, num_proc=None, **kwargs) -> None:
            first, second, scores = read_sts(stsb, PAIRS)
            split = datasets.Dataset.from_dict({"sentence1": first, "sentence2": second, "score": scores.tolist()})
            self.dataset = {"default": datasets.DatasetDict({"test": split})}
            self.data_loaded = True

    return LocalSTSB


def test_mteb_spearman_at_layer_3_is_maskae_sts_spearman(mteb, local_task, minilm_path, stsb, tmp_path,
                                                          private_datasets_cache):
    from maskae.evaluation.mteb import MTEBEncoder, evaluate_mteb

    minilm = Embedder.from_pretrained(minilm_path)
    scores = evaluate_mteb(minilm, [local_task()], layer=3, output_folder=tmp_path / "results")
    ours = evaluate_sts(minilm, stsb, layer=3, limit=PAIRS, whiten=False)
    assert ours["pairs"] == PAIRS
    # MTEB reports Spearman in [-1, 1], maskae x100. Not bit for bit: MTEB embeds each column on its own and
    # scores float32 cosines, maskae embeds both columns together and scores in float64, and that ~1e-7 noise
    # reorders a few near-tied cosines (about 3e-6 here).
    assert scores["LocalSTSB"] == pytest.approx(ours["spearman_x100"] / 100, abs=1e-4)
    assert isinstance(MTEBEncoder(minilm, layer=3), mteb.EncoderProtocol)
    # the gt package ships the model in a folder named model
    (saved,) = (tmp_path / "results" / "results" / "maskae__model-layer3").rglob("LocalSTSB.json")
    assert json.loads(saved.read_text())["scores"]["test"][0]["main_score"] == pytest.approx(scores["LocalSTSB"], abs=1e-6)


def test_cli_mteb_prints_the_main_scores(mteb, local_task, minilm_path, tmp_path, capsys, monkeypatch,
                                         private_datasets_cache):
    monkeypatch.setattr(mteb, "get_task", lambda name: local_task())  # a real name would need the Hub
    code = main(["evaluate", str(minilm_path), "--task", "mteb", "--tasks", "LocalSTSB", "--output",
                 str(tmp_path / "results"), "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    result = json.loads(out[-1])
    assert result["task"] == "mteb" and list(result["main_scores"]) == ["LocalSTSB"]
    assert out[0].startswith("MTEB main score x100 of each task") and "at the default layer" in out[0]
    assert out[1].split() == ["LocalSTSB", f"{100 * result['main_scores']['LocalSTSB']:.2f}"]
    assert list((tmp_path / "results" / "results" / "maskae__model-layer6").rglob("LocalSTSB.json"))  # the last


@pytest.mark.parametrize("name, hint", [("NoSuchTask", "unknown MTEB task 'NoSuchTask';"),
                                        ("stsbenchmark", "(did you mean STSBenchmark?)")])
def test_unknown_task_is_one_config_error(name, hint, mteb, minilm_path):
    from maskae.evaluation.mteb import evaluate_mteb

    with pytest.raises(ConfigError) as error:
        evaluate_mteb(minilm_path, [name])
    assert hint in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("argv, expect", [
    (["--task", "mteb", "--tasks", "NoSuchTask"], "unknown MTEB task"),
    (["--task", "sts", "--tasks", "STSBenchmark"], "--tasks names MTEB tasks"),
    (["--task", "mteb", "--tasks", "STSBenchmark", "--data", "x.tsv"], "--data does not apply"),
    (["--task", "sts"], "--task sts needs --data"),
])
def test_cli_refuses_in_one_line(argv, expect, mteb, minilm_path, capsys):
    assert main(["evaluate", str(minilm_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("maskae evaluate: error: ") and expect in err[-1], err


def test_mteb_without_tasks_in_a_real_process(minilm_path, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "MTEB_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "maskae", "evaluate", str(minilm_path), "--task", "mteb"],
                            env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("maskae evaluate: error: --task mteb needs --tasks NAMES"), result.stderr
