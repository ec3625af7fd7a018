"""`maskae plot --frontier`: the points nothing beats on both axes, drawn from a benchmark file."""

import json

from maskae.cli import main
from maskae.utils.plotting import frontier

POINTS = [
    {"name": "sentence-transformers encode", "kind": "anchor", "layer": None, "speed_ratio": 1.0, "stsb": 82.0},
    {"name": "off the shelf, layer 3", "kind": "off-the-shelf", "layer": 3, "speed_ratio": 2.4, "stsb": 55.0},
    {"name": "distilled, layer 3", "kind": "distilled", "layer": 3, "speed_ratio": 2.4, "stsb": 79.0},
    {"name": "model2vec distill (256 dims)", "kind": "anchor", "layer": 0, "speed_ratio": 30.0, "stsb": 66.0},
    {"name": "off the shelf, layer 1", "kind": "off-the-shelf", "layer": 1, "speed_ratio": 6.6, "stsb": 55.5},
]


def test_frontier_keeps_only_undominated_points():
    names = {p["name"] for p in frontier(POINTS)}
    assert names == {"sentence-transformers encode", "distilled, layer 3", "model2vec distill (256 dims)"}


def test_plot_frontier_writes_a_png(tmp_path, capsys):
    figures = tmp_path / "frontier.json"
    figures.write_text(json.dumps({"cpu": "test CPU", "teacher": "/x/all-MiniLM-L6-v2", "points": POINTS}))
    assert main(["plot", "--frontier", str(figures), "--output", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_frontier_bad_file_is_one_line(tmp_path, capsys):
    figures = tmp_path / "frontier.json"
    figures.write_text("not json")
    assert main(["plot", "--frontier", str(figures)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskae plot: error: cannot read the frontier file")
    figures.write_text(json.dumps({"points": [{"name": "x", "kind": "anchor"}]}))
    assert main(["plot", "--frontier", str(figures), "--output", str(tmp_path / "f.png")]) == 2
    assert "lack 'stsb'" in capsys.readouterr().err
