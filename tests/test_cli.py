"""The commands as a user runs them: --help, the overview, what each stage prints at its end, one-line errors
without tracebacks that name things as the user wrote them, and a folder of one's own images through every stage."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from dd.__main__ import overview
from dd.buffer.__main__ import main as buffer_main
from dd.buffer.__main__ import next_steps as buffer_next_steps
from dd.buffer.config import BufferConfig
from dd.cli import run_cli
from dd.config import load_yaml, make_config
from dd.distill.__main__ import main as distill_main
from dd.distill.config import MTTConfig
from dd.errors import DDError
from dd.eval.__main__ import main as eval_main
from dd.eval.config import EvalConfig
from dd.realdata import prepare_data, random_subset
from dd.viz import class_names
from tests.helpers import run_distill

ROOT = Path(__file__).parents[1]
TINY_DISTILL = ["--iterations", "2", "--syn-steps", "2", "--expert-epochs", "2", "--max-start-epoch", "2",
                "--eval-every", "0", "--eval-epochs", "1", "--lr-img", "100", "--log-every", "1", "--device", "cpu"]


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.e2e
@pytest.mark.parametrize("stage, flag", [("dd.buffer", "--num-experts"), ("dd.distill", "--syn-steps"),
                                         ("dd.eval", "--baseline")])
def test_help(stage, flag):
    result = run(stage, "--help")
    assert result.returncode == 0 and flag in result.stdout and "default:" in result.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("args, message", [
    (("dd.buffer", "--dataset", "nope"), "error: unknown dataset 'nope'"),
    (("dd.buffer", "--dataset", "cifar10", "--data-path", "missing-dir"), "--download"),
    (("dd.distill", "--model", "Nope"), "error: unknown model 'Nope'"),
    (("dd.distill", "--buffer-dir", "no-buffers"), "error: no expert buffer"),
    (("dd.eval", "--synset", "no-such-set"), "error: synthetic set no-such-set does not exist"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_no_help_says_default_none():
    """A flag whose default is 'not set' says what that means (the set's, the dataset's own, none...)."""
    from dd.config import build_parser
    from dd.distill.methods import METHODS
    from dd.eval.transfer import TransferConfig

    for cls in (BufferConfig, *(spec.config for spec in METHODS.values()), EvalConfig, TransferConfig):
        text = build_parser(cls, "prog", "doc").format_help()
        assert "(default: None)" not in text.replace("\n", " ").replace("  ", " "), cls.__name__


@pytest.mark.e2e
@pytest.mark.parametrize("stage, flag", [("dd.eval", "--protocol"), ("dd.report", "--out")])
def test_help_shows(stage, flag):
    result = run(stage, "--help")
    assert result.returncode == 0 and flag in result.stdout


# -- what a stage prints at the end ------------------------------------------------------------------------

@pytest.mark.e2e
def test_python_m_dd_lists_every_stage_and_quickstart_commands_a_stage_accepts():
    text = overview()
    for stage in ("dd.buffer", "dd.distill", "dd.eval", "dd.report"):
        assert f"  {stage}  " in text or f"  {stage} " in text
    commands = [line.strip() for line in text.splitlines() if line.strip().startswith("python -m dd.")]
    assert [c.split()[2] for c in commands[:3]] == ["dd.buffer", "dd.distill", "dd.eval"]
    for command, cls in zip(commands, (BufferConfig, MTTConfig, EvalConfig), strict=False):
        args = shlex.split(command)
        preset = args[args.index("--config") + 1]
        make_config(cls, load_yaml(ROOT / preset), preset)  # a preset that stage takes
    result = run("dd", "nope")
    assert result.returncode == 2 and result.stderr.startswith("error: python -m dd takes no arguments")


def test_buffer_end_names_the_store_and_the_commands_quoted():
    config = BufferConfig(dataset="imagefolder", data_path="my data", image_size=28)
    text = buffer_next_steps(config, Path("buffers/imagefolder/ConvNet/a b"))
    distill = shlex.split(text.split("distil a set from them: ", 1)[1].splitlines()[0])
    assert distill == ["python", "-m", "dd.distill", "--dataset", "imagefolder", "--model", "ConvNet", "--buffer",
                       "buffers/imagefolder/ConvNet/a b", "--data-path", "my data", "--image-size", "28"]
    report = shlex.split(text.split("report on them: ", 1)[1])
    assert report == ["python", "-m", "dd.report", "buffers/imagefolder/ConvNet/a b"]


@pytest.mark.e2e
def test_distill_and_eval_end_with_their_outputs_and_next_commands(digits_buffer, tmp_path, capsys):
    run_dir = tmp_path / "my run"
    assert distill_main(["--buffer-dir", str(digits_buffer), "--run-dir", str(run_dir), *TINY_DISTILL]) == 0
    out = capsys.readouterr().out
    store = next((digits_buffer / "digits" / "ConvNet").iterdir())
    parent = digits_buffer / "digits" / "ConvNet"
    assert f"experts: {store} (2 experts of 4 epochs; the only store under {parent})" in out
    assert json.loads((run_dir / "config.json").read_text())["buffer"] == str(store)
    evaluate = shlex.split(out.split("next: evaluate it: ", 1)[1].splitlines()[0])
    assert evaluate == ["python", "-m", "dd.eval", "--synset", str(run_dir / "synset"), "--baseline", "random"]
    assert shlex.split(out.split("report on the run: ", 1)[1].splitlines()[0]) == ["python", "-m", "dd.report",
                                                                                  str(run_dir)]
    assert eval_main(["--synset", str(run_dir / "synset"), "--runs", "1", "--epochs", "1", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == (f"results: {run_dir / 'eval' / 'results.json'} (every record); tables: "
                         f"{run_dir / 'eval' / 'results.md'}")
    assert shlex.split(lines[-1].split("next: report on the run: ", 1)[1]) == ["python", "-m", "dd.report",
                                                                               str(run_dir)]


# -- error wording ---------------------------------------------------------------------------------------

def one_line(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.e2e
def test_an_image_size_other_than_the_experts_says_so(digits_buffer, tmp_path, capsys):
    err = one_line(capsys, distill_main, ["--buffer-dir", str(digits_buffer), "--run-dir", str(tmp_path / "r"),
                                          *TINY_DISTILL, "--image-size", "16"])
    store = next((digits_buffer / "digits" / "ConvNet").iterdir())
    assert err == (f"error: --image-size 16 gives 1x16x16 images, but the experts in {store} were trained on 1x8x8; "
                   "pass --image-size 8 (the experts' data) or use the dataset and folder they were trained on")


def grey_tree(root: Path, train: dict[str, int], side: int = 12) -> Path:
    """DIR/train/<class>/*.png and DIR/val/<class>/*.png of grey squares, a different shade per class."""
    for c, (name, n) in enumerate(train.items()):
        for split, count in (("train", n), ("val", 2)):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shade = 40 + 60 * c + 5 * i
                Image.new("L", (side, side), shade).save(folder / f"{i}.png")
    return root


def test_a_class_is_named_by_its_folder(tmp_path):
    tree = grey_tree(tmp_path / "data", {"cat": 4, "dog": 1})
    with pytest.raises(DDError, match="^class folder 'dog' has 1 training image"):
        prepare_data("imagefolder", torch.device("cpu"), str(tree), val_fraction=0.1)
    data = prepare_data("imagefolder", torch.device("cpu"), str(tree))
    with pytest.raises(DDError, match="^--ipc 3 is larger than class folder 'dog', which has 1 training images"):
        random_subset(data, 3, 0)


# -- your own data: the README's flow on a folder of grey PNGs -----------------------------------------------

@pytest.mark.e2e
def test_own_grey_folder_flows_through_every_stage_without_size_or_path_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the presets name each other by their path from the repository root
    tree = grey_tree(tmp_path / "my images", {"one": 6, "three": 6, "two": 6})
    buffers = tmp_path / "buffers"
    assert buffer_main(["--config", "experiments/buffer/folder.yaml", "--data-path", str(tree), "--buffer-dir",
                        str(buffers), "--num-experts", "1", "--epochs", "3", "--device", "cpu"]) == 0
    store = next((buffers / "imagefolder" / "ConvNet").iterdir())
    header = json.loads((store / "manifest.json").read_text())["dataset"]
    assert (header["channels"], header["size"], header["num_classes"]) == (1, [12, 12], 3)  # grey, own side
    run_dir = tmp_path / "run"
    run_distill("experiments/mtt/folder_ipc1.yaml", buffer_config=None, data_path=str(tree), buffer=str(store),
                run_dir=str(run_dir), iterations=2, syn_steps=2, max_start_epoch=1, eval_every=0, eval_epochs=2,
                device="cpu")
    assert class_names("imagefolder", str(tree), 3) == ["one", "three", "two"]
    assert eval_main(["--config", "experiments/eval/folder.yaml", "--synset", str(run_dir / "synset"), "--runs",
                      "1", "--epochs", "2", "--baseline", "random", "--device", "cpu"]) == 0
    records = json.loads((run_dir / "eval" / "results.json").read_text())["runs"]
    assert {r["source"] for r in records} == {"distilled", "random"}
    assert all(r["data"]["shape"] == [1, 12, 12] and r["data"]["test"] == 6 for r in records)
    capsys.readouterr()


@pytest.mark.e2e
def test_channels_chosen_at_the_buffer_is_named_by_distill_and_taken_from_the_set_by_eval(tmp_path, capsys,
                                                                                         monkeypatch):
    """Experts of a grey folder loaded as colour (--channels 3): dd.distill without the flag names it; dd.eval
    takes it from the set."""
    monkeypatch.chdir(ROOT)
    tree = grey_tree(tmp_path / "data", {"one": 6, "two": 6})
    buffers = tmp_path / "buffers"
    assert buffer_main(["--config", "experiments/buffer/folder.yaml", "--data-path", str(tree), "--buffer-dir",
                        str(buffers), "--num-experts", "1", "--epochs", "2", "--channels", "3", "--device",
                        "cpu"]) == 0
    assert "--channels 3" in capsys.readouterr().out.split("next: distil a set from them: ", 1)[1].splitlines()[0]
    store = next((buffers / "imagefolder" / "ConvNet").iterdir())
    run_dir = tmp_path / "run"
    argv = ["--config", "experiments/mtt/folder_ipc1.yaml", "--buffer-config", "none", "--data-path", str(tree),
            "--buffer", str(store), "--run-dir", str(run_dir), "--iterations", "1", "--syn-steps", "2",
            "--max-start-epoch", "1", "--expert-epochs", "1", "--eval-every", "0", "--eval-epochs", "1",
            "--device", "cpu"]
    err = one_line(capsys, distill_main, argv)
    assert err == (f"error: the default --image-size (12) gives 1x12x12 images, but the experts in {store} were "
                   "trained on 3x12x12; pass --channels 3 (the experts' data) or use the dataset and folder they "
                   "were trained on")
    assert distill_main([*argv, "--channels", "3"]) == 0
    assert eval_main(["--synset", str(run_dir / "synset"), "--runs", "1", "--epochs", "1", "--device", "cpu"]) == 0
    records = json.loads((run_dir / "eval" / "results.json").read_text())["runs"]
    assert records and all(r["data"]["shape"] == [3, 12, 12] for r in records)
