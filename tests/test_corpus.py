"""`maskae corpus`: text corpora copied, task tsvs reduced to their distinct sentences, labels dropped."""

from maskae.cli import main


def test_corpus_folder_keeps_text_and_task_sentences_without_labels(tmp_path, capsys):
    text = tmp_path / "wiki.txt"
    text.write_text("= Title =\nfirst paragraph .\n", encoding="utf-8")
    pairs = tmp_path / "train.tsv"
    pairs.write_text('sentence1\tsentence2\tlabel\nA cat sits.\t"A ""big"" cat."\t1\nA cat sits.\tDogs run.\t0\n',
                     encoding="utf-8")
    out = tmp_path / "corpus"
    assert main(["corpus", str(out), "--add", str(text), str(pairs)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00-wiki.txt", "task_sentences.txt"]
    assert (out / "00-wiki.txt").read_bytes() == text.read_bytes()
    assert (out / "task_sentences.txt").read_text(encoding="utf-8").splitlines() == [
        "A cat sits.", 'A "big" cat.', "Dogs run."]


def test_corpus_refuses_an_existing_folder_and_a_missing_file(tmp_path, capsys):
    text = tmp_path / "wiki.txt"
    text.write_text("words\n", encoding="utf-8")
    assert main(["corpus", str(tmp_path), "--add", str(text)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["corpus", str(tmp_path / "new"), "--add", str(tmp_path / "missing.tsv")]) == 2
    assert "is not a file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
