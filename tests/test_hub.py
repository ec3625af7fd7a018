"""Hub sharing: the exported directory is safe and self-contained, its card carries the measured metrics,
it loads by repo id from the Hub cache without maskae, pipelines work on it, and pushes commit exactly
its files (checked at the `HfApi` boundary: nothing reaches the network)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, tiny_stock
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, BertConfig, PreTrainedTokenizerFast, pipeline

from maskae import (
    ConfigError,
    ExportError,
    MaskAEConfig,
    MaskAEForMaskedLM,
    save_for_hub,
)
from maskae.cli import main
from maskae.export.hub import AUTO_MAP, TAGS, TEMPLATE

SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "the bird flew over the house",
    "a fish swam in the pond",
    "the sun shines in the sky",
    "my friend reads a good book",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
METRICS = [
    {"metric": "masked_accuracy", "value": 0.8125, "dataset": "Salesforce/wikitext", "config": "wikitext-2-v1",
     "split": "validation"},
    {"metric": "pseudo_perplexity", "value": 3.5, "dataset": "Salesforce/wikitext", "split": "validation"},
    {"metric": "sts_spearman", "value": 41.25, "dataset": "sentence-transformers/stsb", "split": "test", "layer": 1},
]
RECIPE = {"model": {"split_layer": 1, "bottleneck": "projection", "bottleneck_dim": 16},
          "noise": {"mask_prob": 1.0, "strategy": "one word per copy"},
          "training": {"max_steps": 200, "lr": 0.005, "batch_size": 36}}
REVISION = "0123456789abcdef0123456789abcdef01234567"
PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")  # pickle protocols, torch zip


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style word-level tokenizer over the words of SENTENCES."""
    words = sorted({w for s in SENTENCES for w in s.split()})
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


@pytest.fixture(scope="module")
def trained():
    """A 2-layer MaskAE with a projection bottleneck, trained (full batch, seeded, ~200 ms/10 steps) to
    reconstruct every word of SENTENCES from the rest: every one-word-masked copy of every sentence."""
    tokenizer = tiny_tokenizer()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: more threads only contend on a shared machine
    try:
        torch.manual_seed(0)
        base = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                          max_position_embeddings=16)
        model = MaskAEForMaskedLM(MaskAEConfig(base_config=base, split_layer=1, bottleneck="projection",
                                               bottleneck_dim=16))
        ids = tokenizer(SENTENCES, return_tensors="pt")["input_ids"]  # every sentence has 6 words
        words = ids.shape[1] - 2
        noisy = ids.repeat_interleave(words, dim=0)
        labels = torch.full_like(noisy, -100)
        rows, positions = torch.arange(len(noisy)), 1 + torch.arange(len(noisy)) % words
        labels[rows, positions] = noisy[rows, positions]
        noisy[rows, positions] = tokenizer.mask_token_id
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
        for _ in range(200):
            loss = model(noisy, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.05
    return model.eval(), tokenizer


def write_png(path: Path) -> Path:
    """A valid 1x1 grey PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80"))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def hub_dir(trained, tmp_path_factory):
    model, tokenizer = trained
    tmp = tmp_path_factory.mktemp("hub")
    plot = write_png(tmp / "loss_curve.png")
    return save_for_hub(model, tmp / "out", tokenizer=tokenizer, metrics=METRICS, datasets=["Salesforce/wikitext"],
                        recipe=RECIPE, repo_id="org/tiny-maskae", plots=[plot])


def files_of(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def as_hub_cache(folder: Path, hf_home: Path, repo_id: str) -> None:
    """Lay `folder` out as huggingface_hub's cache lays out a downloaded repo at revision REVISION."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for name in files_of(folder):
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes((folder / name).read_bytes())


def run_offline_without_maskae(code: str, hf_home: Path) -> str:
    """Run `code` in a fresh interpreter where `import maskae` fails and the Hub is only the cache at hf_home."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(hf_home / "modules"),
           "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("PYTHONPATH", None)
    guard = "import sys; sys.modules['maskae'] = None\n"
    result = subprocess.run([sys.executable, "-c", guard + textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=300, env=env, cwd=hf_home)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_saved_directory_is_safetensors_and_self_contained_code(hub_dir, trained):
    model, _ = trained
    files = files_of(hub_dir)
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json", "tokenizer_config.json",
            "configuration_maskae.py", "modeling_maskae.py", "backbones.py", "errors.py",
            "plots/loss_curve.png"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    for name in files:
        assert not (hub_dir / name).read_bytes().startswith(PICKLE_MAGIC), name
    assert json.loads((hub_dir / "config.json").read_text())["auto_map"] == AUTO_MAP
    weights = load_file(hub_dir / "model.safetensors")
    for key, value in model.state_dict().items():
        if key in weights:
            torch.testing.assert_close(weights[key], value, atol=0, rtol=0)
    assert "maskae.backbone.embeddings.word_embeddings.weight" in weights
    # the shipped code is maskae's own, with only relative imports between the four files
    for name in ("configuration_maskae.py", "modeling_maskae.py", "backbones.py", "errors.py"):
        assert (hub_dir / name).read_text() == (REPO / "maskae" / name).read_text()


def test_card_metadata_holds_tags_and_measured_metrics(hub_dir):
    card = ModelCard.load(hub_dir / "README.md")
    data = card.data
    assert set(TAGS) <= set(data.tags) and "bert" in data.tags
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "fill-mask"
    assert data.datasets == ["Salesforce/wikitext"]
    assert data.model_name == "tiny-maskae"
    results = {(r.task_type, r.metric_type, r.dataset_type, r.dataset_split): r.metric_value for r in data.eval_results}
    assert results == {
        ("fill-mask", "accuracy", "Salesforce/wikitext", "validation"): 0.8125,
        ("fill-mask", "perplexity", "Salesforce/wikitext", "validation"): 3.5,
        ("sentence-similarity", "spearmanr", "sentence-transformers/stsb", "test"): 41.25,
    }
    assert "STS Spearman correlation (layer 1)" in [r.metric_name for r in data.eval_results]
    text = card.text
    assert "split after layer 1" in text
    assert "32 → 16 → 32" in text  # the projection bottleneck
    assert "mask_prob: 1.0" in text and "max_steps: 200" in text  # noise and budget from the recipe
    assert '"org/tiny-maskae", trust_remote_code=True' in text
    assert "![loss curve](plots/loss_curve.png)" in text


def test_card_without_metrics_has_no_model_index(trained, tmp_path):
    model, _ = trained
    save_for_hub(model, tmp_path / "out")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.eval_results is None and "model-index" not in card.content
    assert "No evaluation results were recorded" in card.text
    assert "No tokenizer was saved" in card.text


def test_template_is_the_model_cards_file():
    """The package's template (what a wheel ships) is the one in model_cards/."""
    assert TEMPLATE.resolve() == (REPO / "model_cards" / "maskae.md.jinja").resolve()


def test_loads_by_repo_id_with_remote_code_and_no_maskae(hub_dir, trained, tmp_path):
    model, tokenizer = trained
    batch = tokenizer(["the cat sat on the [MASK]", "a fish swam in the pond"], return_tensors="pt")
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"])
    save_file({"ids": batch["input_ids"], "mask": batch["attention_mask"], "logits": out.logits, "code": out.code},
              tmp_path / "ref.safetensors")
    as_hub_cache(hub_dir, tmp_path / "hf", "org/tiny-maskae")
    run_offline_without_maskae(f"""
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForMaskedLM, pipeline
        ref = load_file({str(tmp_path / 'ref.safetensors')!r})
        mlm = AutoModelForMaskedLM.from_pretrained("org/tiny-maskae", trust_remote_code=True).eval()
        enc = AutoModel.from_pretrained("org/tiny-maskae", trust_remote_code=True).eval()
        assert type(mlm).__module__.startswith("transformers_modules."), type(mlm).__module__
        assert type(mlm).__name__ == "MaskAEForMaskedLM" and type(enc).__name__ == "MaskAEModel"
        with torch.no_grad():
            logits = mlm(input_ids=ref["ids"], attention_mask=ref["mask"]).logits
            code = enc(input_ids=ref["ids"], attention_mask=ref["mask"])[0]
        torch.testing.assert_close(logits, ref["logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(code, ref["code"], atol=1e-5, rtol=0)
        fill = pipeline("fill-mask", model="org/tiny-maskae", trust_remote_code=True)
        assert fill("the cat sat on the [MASK]")[0]["token_str"] == "mat"
        features = pipeline("feature-extraction", model="org/tiny-maskae", trust_remote_code=True,
                            return_tensors=True)("a fish swam in the pond")
        torch.testing.assert_close(features, ref["code"][1:], atol=1e-5, rtol=0)
    """, tmp_path / "hf")


def test_pipelines_work_on_a_saved_model(hub_dir, trained):
    """With maskae imported, the Auto classes resolve to maskae's own classes; no remote code runs."""
    model, tokenizer = trained
    fill = pipeline("fill-mask", model=str(hub_dir))
    assert type(fill.model) is MaskAEForMaskedLM
    for text, expected in [("the cat sat on the [MASK]", "mat"), ("the dog sat on the [MASK]", "log"),
                           ("the [MASK] sat on the mat", "cat"), ("a fish swam in the [MASK]", "pond")]:
        best = fill(text)[0]
        assert best["token_str"] == expected and best["score"] > 0.5, (text, best)
    features = pipeline("feature-extraction", model=str(hub_dir), return_tensors=True)("the sun shines in the sky")
    batch = tokenizer(["the sun shines in the sky"], return_tensors="pt")
    with torch.no_grad():
        code = model(**batch).code
    assert features.shape == (1, 8, 16)
    torch.testing.assert_close(features, code, atol=1e-6, rtol=0)


def test_stock_exports_load_by_repo_id_without_remote_code(tmp_path):
    stock = tiny_stock("bert").eval()
    stock.save_pretrained(tmp_path / "stock")
    model = MaskAEForMaskedLM.from_backbone(tmp_path / "stock", split_layer=3).eval()
    ids = torch.tensor([[2, 17, 33, 45, 8, 3], [2, 60, 61, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        out = model(ids, mask)
    save_file({"ids": ids, "mask": mask, "logits": out.logits, "code": out.code}, tmp_path / "ref.safetensors")
    for part in ("full", "encoder"):
        folder = save_for_hub(model, tmp_path / part, stock=part)
        assert not [f for f in files_of(folder) if f.endswith(".py")]
        assert "auto_map" not in json.loads((folder / "config.json").read_text())
        card = ModelCard.load(folder / "README.md")
        assert card.data.pipeline_tag == ("fill-mask" if part == "full" else "feature-extraction")
        assert "trust_remote_code=True" not in card.text and "without `trust_remote_code`" in card.text
        as_hub_cache(folder, tmp_path / "hf", f"org/tiny-{part}")
    run_offline_without_maskae(f"""
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForMaskedLM
        ref = load_file({str(tmp_path / 'ref.safetensors')!r})
        keep = ref["mask"].bool()
        full = AutoModelForMaskedLM.from_pretrained("org/tiny-full", trust_remote_code=False).eval()
        enc = AutoModel.from_pretrained("org/tiny-encoder", trust_remote_code=False).eval()
        assert type(full).__name__ == "BertForMaskedLM" and type(enc).__name__ == "BertModel"
        assert type(full).__module__.startswith("transformers.models.bert")
        with torch.no_grad():
            logits = full(input_ids=ref["ids"], attention_mask=ref["mask"]).logits
            code = enc(input_ids=ref["ids"], attention_mask=ref["mask"]).last_hidden_state
        torch.testing.assert_close(logits[keep], ref["logits"][keep], atol=1e-5, rtol=0)
        torch.testing.assert_close(code[keep], ref["code"][keep], atol=1e-5, rtol=0)
    """, tmp_path / "hf")


def test_save_for_hub_errors(trained, tmp_path):
    model, _ = trained
    with pytest.raises(ExportError, match="no stock BertForMaskedLM equivalent"):
        save_for_hub(model, tmp_path / "a", stock="full")
    with pytest.raises(ExportError, match="unknown stock export 'half'"):
        save_for_hub(model, tmp_path / "b", stock="half")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ExportError, match="is not empty"):
        save_for_hub(model, tmp_path / "c")
    with pytest.raises(ConfigError, match="needs 'metric', 'value' and 'dataset'"):
        save_for_hub(model, tmp_path / "d", metrics=[{"metric": "masked_accuracy", "value": 0.5}])
    with pytest.raises(ConfigError, match="add its 'task'"):
        save_for_hub(model, tmp_path / "e", metrics=[{"metric": "bleu", "value": 0.5, "dataset": "x/y"}])
    with pytest.raises(ExportError, match="not an image file"):
        save_for_hub(model, tmp_path / "f", plots=[tmp_path / "missing.png"])


class HubBoundary:
    """Stands in for the three `HfApi` calls that would reach the network, and records them."""

    def __init__(self, monkeypatch):
        self.repos, self.branches, self.commits = [], [], []
        monkeypatch.setattr(HfApi, "create_repo", self.create_repo)
        monkeypatch.setattr(HfApi, "create_branch", self.create_branch)
        monkeypatch.setattr(HfApi, "create_commit", self.create_commit)

    def create_repo(self, repo_id, **kwargs):
        self.repos.append((repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, **kwargs):
        self.branches.append((repo_id, kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        files = {op.path_in_repo: Path(op.path_or_fileobj).read_bytes() for op in operations}
        self.commits.append((repo_id, files, kwargs))
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{'0' * 40}",
                          commit_message=kwargs.get("commit_message", ""), commit_description="", oid="0" * 40)


def test_push_commits_exactly_the_exported_files(hub_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    hub = HubBoundary(monkeypatch)
    code = main(["push", str(hub_dir), "--repo-id", "org/tiny-maskae", "--private", "--revision", "dev",
                 "--commit-message", "first upload"])
    assert code == 0
    assert hub.repos == [("org/tiny-maskae", {"private": True, "exist_ok": True, "repo_type": "model"})]
    assert hub.branches == [("org/tiny-maskae", {"branch": "dev", "exist_ok": True})]
    (repo_id, files, kwargs), = hub.commits
    assert repo_id == "org/tiny-maskae"
    assert kwargs["commit_message"] == "first upload" and kwargs["revision"] == "dev"
    assert set(files) == files_of(hub_dir)
    assert not any(data.startswith(PICKLE_MAGIC) for data in files.values())
    assert capsys.readouterr().out.strip() == f"https://huggingface.co/org/tiny-maskae/commit/{'0' * 40}"


def test_push_errors_are_one_line_and_stop_before_the_network(hub_dir, monkeypatch, tmp_path, capsys):
    hub = HubBoundary(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert main(["push", str(hub_dir), "--repo-id", "org/bad name!"]) == 2
    assert "is not a valid Hub repo id; use ORG/NAME" in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert main(["push", str(hub_dir), "--repo-id", "org/tiny-maskae"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hf auth login" in err and "HF_TOKEN" in err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    assert main(["push", str(pickled), "--repo-id", "org/tiny-maskae"]) == 2
    assert "pickle files (pytorch_model.bin)" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "nowhere"), "--repo-id", "org/tiny-maskae"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    assert hub.repos == hub.commits == []


def test_model_push_to_hub_ships_the_custom_code(trained, monkeypatch):
    model, _ = trained
    hub = HubBoundary(monkeypatch)
    model.push_to_hub("org/tiny-maskae")  # the Hub card lookup fails offline, so transformers writes a new one
    (_, files, _), = hub.commits
    assert {"model.safetensors", "config.json", "configuration_maskae.py", "modeling_maskae.py", "backbones.py",
            "errors.py"} <= set(files)
    auto_map = json.loads(files["config.json"])["auto_map"]
    assert auto_map["AutoConfig"] == AUTO_MAP["AutoConfig"]
    assert auto_map["AutoModelForMaskedLM"] == AUTO_MAP["AutoModelForMaskedLM"]


def test_export_command_reads_training_outputs(trained, tmp_path, capsys):
    """`maskae export` on what `maskae train` writes: model, tokenizer, recipe.yaml, eval_results.json."""
    model, tokenizer = trained
    run = tmp_path / "run"
    model.save_pretrained(run)
    tokenizer.save_pretrained(run)
    (run / "recipe.yaml").write_text(yaml.safe_dump({**RECIPE, "data": {"train": None, "validation": None}}))
    (run / "eval_results.json").write_text(json.dumps(
        {"masked_accuracy": 0.75, "masked_loss": 1.2, "pseudo_perplexity": 4.0, "step": 200, "train_wall_time_s": 3.0}
    ))
    assert main(["export", str(run), "--out", str(tmp_path / "hub")]) == 0
    assert "maskae push" in capsys.readouterr().out
    card = ModelCard.load(tmp_path / "hub" / "README.md")
    measured = {(r.metric_name, r.dataset_type, r.dataset_config, r.metric_value) for r in card.data.eval_results}
    assert measured == {("Masked-token accuracy", "Salesforce/wikitext", "wikitext-2-v1", 0.75),
                        ("Pseudo-perplexity", "Salesforce/wikitext", "wikitext-2-v1", 4.0)}
    assert card.data.datasets == ["Salesforce/wikitext"]
    assert AutoTokenizer.from_pretrained(tmp_path / "hub").mask_token == "[MASK]"

    assert main(["export", str(run), "--out", str(tmp_path / "stock"), "--stock"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("maskae export: error:")]
    assert len(errors) == 1 and "no stock BertForMaskedLM equivalent" in errors[0]
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "has no config.json" in capsys.readouterr().err

