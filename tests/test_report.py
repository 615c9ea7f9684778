"""dd.report on a tiny run and buffer (files, the numbers in report.md, image sizes), the image history a run
keeps (grids/, progress.gif) and the report's parts on hand cases."""

from __future__ import annotations

import json
import re
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dd.cli import run_cli
from dd.eval import EvalConfig, evaluate
from dd.report import make_report
from dd.report.__main__ import main as report_main
from dd.report.artefacts import Buffer, read_run
from dd.report.html import markdown_to_html
from dd.viz import grid_image
from tests.helpers import run_distill

pytest.importorskip("matplotlib")

SETTINGS = {"iterations": 4, "syn_steps": 2, "expert_epochs": 2, "max_start_epoch": 2, "eval_every": 2,
            "eval_epochs": 2, "lr_img": 100, "log_every": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def tiny_run(digits_buffer, tmp_path_factory) -> Path:
    """A 4-iteration MTT run on digits, evaluated at iterations 2 and 4, then by dd.eval (2 seeds, 2 epochs)."""
    run = tmp_path_factory.mktemp("report") / "mtt run"  # a space: paths in printed commands must be quoted
    run_distill(buffer_dir=str(digits_buffer), run_dir=str(run), **SETTINGS)
    evaluate(EvalConfig(synset=str(run / "synset"), epochs=2, runs=2, device="cpu"))
    return run


def store_of(buffer_root: Path) -> Path:
    return next((buffer_root / "digits" / "ConvNet").iterdir())


@pytest.mark.e2e
def test_a_run_keeps_a_grid_per_evaluation_and_their_animation(tiny_run):
    grids = sorted(p.name for p in (tiny_run / "grids").iterdir())
    assert grids == ["grid_000002.png", "grid_000004.png"]
    with Image.open(tiny_run / "progress.gif") as gif:
        assert gif.n_frames == 2
        with Image.open(tiny_run / "grids" / "grid_000004.png") as last:
            assert gif.size == last.size
    assert json.loads((tiny_run / "config.json").read_text())["buffer"] == str(
        Path(json.loads((tiny_run / "synset" / "synset.json").read_text())["buffer"]))


@pytest.mark.e2e
def test_report_files_numbers_and_image_sizes(tiny_run, digits_buffer, tmp_path):
    out = make_report([tiny_run, store_of(digits_buffer)], tmp_path / "out")
    names = sorted(p.name for p in out.iterdir())
    assert "curves.png" in names and "report.md" in names and "report.html" in names
    buffer_png = next(out.glob("buffer_*.png"))
    for png, size in ((out / "curves.png", (1100, 360)), (buffer_png, (600, 360))):
        with Image.open(png) as im:
            im.load()
            assert im.format == "PNG" and im.size == size
    markdown = (out / "report.md").read_text()
    # the summary row holds the numbers of metrics.jsonl and results.json
    metrics = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    vals = [(r["iteration"], r["val/ConvNet"]) for r in metrics if "val/ConvNet" in r]
    best = max(vals, key=lambda v: (v[1], -v[0]))
    tests = [r["accuracy"] for r in json.loads((tiny_run / "eval" / "results.json").read_text())["runs"]]
    seconds = statistics.median(r["seconds_per_iteration"] for r in metrics if "loss" in r)
    row = next(line for line in markdown.splitlines() if line.startswith("| mtt run |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:6] == ["mtt", "digits", "1", "4 of 4", "val/ConvNet"]
    assert cells[6] == f"{100 * best[1]:.2f} (it {best[0]})" and cells[7] == f"{100 * vals[-1][1]:.2f} (it 4)"
    assert cells[8] == (f"{100 * statistics.fmean(tests):.2f} ± {100 * statistics.pstdev(tests):.2f} "
                        "(2 seeds, ConvNet, protocol mtt)")
    assert cells[9] == f"{seconds:.3g}"
    # the grids of both evaluations and the buffer's per-epoch accuracy (2 experts tested at epochs 2 and 4)
    assert "![iteration 2](images/0-mtt%20run/grid_000002.png)" in markdown and "![iteration 4](" in markdown
    assert (out / "images" / "0-mtt run" / "grid_000004.png").read_bytes() == (
        tiny_run / "grids" / "grid_000004.png").read_bytes()  # copied: the report folder can move
    records = [json.loads(p.read_text()) for p in sorted(store_of(digits_buffer).glob("expert_*.json"))]
    at4 = [r["test_acc"][4] for r in records]
    assert f"| 4 | {100 * statistics.fmean(at4):.2f} ± {100 * statistics.pstdev(at4):.2f} | 2 |" in markdown
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 + 1 + 1 and "data:image/gif;base64," in html
    assert 'src="' not in html.replace('src="data:', "")  # self-contained: every image inlined


@pytest.mark.e2e
def test_report_compares_runs_by_the_keys_that_differ(tiny_run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((tiny_run / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "lr_img": 10.0, "run_dir": "elsewhere"}))
    (other / "metrics.jsonl").write_text(json.dumps({"iteration": 2, "loss": 0.5, "syn_lr": 0.01}) + "\n")
    out = make_report([tiny_run, other], tmp_path / "out")
    markdown = (out / "report.md").read_text()
    assert "| lr_img | `100.0` | `10.0` |" in markdown and "| run_dir |" not in markdown


@pytest.mark.e2e
def test_the_command_writes_next_to_the_run_and_quotes_the_path(tiny_run, capsys):
    assert report_main([str(tiny_run)]) == 0
    assert (tiny_run / "report" / "report.md").is_file()
    assert shlex.quote(str((tiny_run / "report" / "report.html").resolve())) in capsys.readouterr().out


@pytest.mark.e2e
def test_missing_matplotlib_is_one_line_naming_the_install(tiny_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        run_cli(report_main, [str(tiny_run), "--out", str(tiny_run / "r2")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ") and "pip install 'dd[report]'" in err


@pytest.mark.e2e
@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nothing-here", "is not a folder"),
    (lambda p: p, "holds neither a run"),
])
def test_a_folder_that_is_no_run_is_one_line(tmp_path, capsys, make, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(report_main, [str(make(tmp_path))])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_buffer_accuracy_is_mean_and_population_std_over_the_experts_tested():
    buffer = Buffer(Path("b"), {}, [{"test_acc": [None, 0.5, None, 0.7]}, {"test_acc": [None, 0.7, None, 0.9]},
                                    {"test_acc": [None, None, None, 0.8]}])
    epochs, means, stds, counts = buffer.test_accuracy()
    assert epochs == [1, 3] and counts == [2, 3]
    assert means == pytest.approx([0.6, 0.8]) and stds == pytest.approx([0.1, (0.02 / 3) ** 0.5])


def test_run_reader_skips_torn_lines_and_resume_notes(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1, "loss": 2.0}\n{"iteration": 2, "resumed": {}}\n'
                                            '{"iteration": 2, "val/ConvNet": 0.5}\n{"iteration": 3, "lo')
    run = read_run(tmp_path)
    assert run.series("loss") == ([1], [2.0]) and run.accuracy_keys() == ["val/ConvNet"] and run.iteration == 2


def test_html_inlines_images_and_renders_tables(tmp_path):
    Image.new("RGB", (3, 2), "red").save(tmp_path / "a.png")
    text = "# title `x`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- item\n\n![pic](a.png)\n"
    page = markdown_to_html(text, tmp_path, "t")
    assert "<h1>title <code>x</code></h1>" in page
    assert "<tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr>" in page and "<li>item</li>" in page
    assert re.search(r'<img alt="pic" src="data:image/png;base64,[A-Za-z0-9+/=]+">', page)


def test_grid_names_each_run_of_equal_labels_once_under_its_row():
    images = torch.zeros(6, 1, 8, 8)  # black tiles on a white page: ink below a row is a label
    grid = grid_image(images, nrow=3, labels=["0", "0", "0", "1", "2", "3"], title="iteration 7")
    tile = 32 + 2
    assert grid.size == (3 * tile + 2, 20 + 2 * (tile + 16) + 2)
    gray = torch.from_numpy(np.asarray(grid.convert("L"), dtype=np.float32))

    def inked(row: int, column: int) -> bool:
        top = 20 + row * (tile + 16) + tile + 1
        strip = gray[top:top + 15, 2 + column * tile:2 + column * tile + 32]
        return bool((strip < 128).any())

    assert not inked(0, 0) and inked(0, 1) and not inked(0, 2)  # "0" once, centred under the 3 tiles of class 0
    assert all(inked(1, c) for c in range(3))  # classes 1, 2, 3: one label each
    assert bool((gray[:20] < 128).any())  # the title


def test_the_summary_cell_holds_one_test_setting_only():
    from dd.report.artefacts import Run
    from dd.report.build import _test_cell

    def rec(acc, split="test", lr=0.01, model="ConvNet", seed=0):
        return {"source": "distilled", "set": {"sha256": "s"}, "dataset": "digits", "split": split, "model": model,
                "seed": seed, "protocol": {"name": "mtt", "lr": lr}, "accuracy": acc}

    records = [rec(0.5, model="MLP"), rec(0.9, split="val"), rec(0.8, seed=0), rec(0.6, seed=1), rec(0.1, lr=0.02)]
    run = Run(Path("r"), {"model": "ConvNet"}, [], [], {"sha256": "s", "protocol": "mtt"}, [],
              {Path("a/results.json"): records})
    # the run's own model first; validation records and another lr are not merged into it
    assert _test_cell(run) == "70.00 ± 10.00 (2 seeds, ConvNet, protocol mtt; 2 other settings below)"
    assert _test_cell(Run(Path("r"), {}, [], [], {"sha256": "s"}, [], {Path("a"): [rec(0.9, split="val")]})) == "–"
