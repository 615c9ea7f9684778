"""Bad input to the three commands: each case exits with status 2 and one line ``error: ...`` that names
the cause and the fix, with no traceback (run through ``run_cli``, as ``python -m dd.<stage>`` does)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dd.buffer.__main__ import main as buffer_main
from dd.cli import run_cli
from dd.distill.__main__ import main as distill_main
from dd.eval.__main__ import main as eval_main
from tests.helpers import Inputs, cases_on_experts_as_e2e


class WritesMarker:
    """Unpickling this opens (creates) a file: the payload a malicious replay_buffer.pt would carry."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_buffer(inputs: Inputs) -> list[str]:
    path = inputs.tmp / "replay_buffer_0.pt"
    torch.save([[[torch.zeros(1), WritesMarker(inputs.tmp / "executed")]]], path)
    return ["import", str(path), "--dataset", "digits", "--model", "ConvNetD1", "--epochs", "2",
            "--buffer-dir", str(inputs.tmp / "b")]


# case: (command, argv from the inputs, words the message must hold)
CASES = {
    "unknown dataset": (buffer_main, lambda i: ["--dataset", "nope"], ["unknown dataset 'nope'", "choose from"]),
    "unknown model": (distill_main, lambda i: i.distill("--model", "Nope"), ["unknown model 'Nope'", "list_models"]),
    "unknown method": (distill_main, lambda i: i.distill("--method", "nope"), ["unknown method 'nope'"]),
    "missing data folder": (buffer_main, lambda i: ["--dataset", "imagefolder", "--data-path", str(i.tmp / "none")],
                            ["does not exist", "--data-path"]),
    "empty class folder": (buffer_main, lambda i: i.folder_dataset("empty class"), ["train/b", "holds no images"]),
    "folder without images": (buffer_main, lambda i: i.folder_dataset("no images"), ["no images under", "expected"]),
    "buffer of another model": (distill_main, lambda i: i.distill("--model", "ConvNetD2", buffer=str(i.store)),
                                ["holds ConvNet experts on digits", "not ConvNetD2", "--buffer"]),
    "buffer of another dataset": (distill_main, lambda i: i.distill("--dataset", "mnist", buffer=str(i.store)),
                                  ["holds ConvNet experts on digits", "not ConvNet on mnist"]),
    "too few stored epochs": (distill_main, lambda i: i.distill("--max-start-epoch", "4"),
                              ["stores 4 epochs", "needs 6", "lower them"]),
    "ipc larger than a class (random baseline)": (
        eval_main, lambda i: ["--baseline", "random", "--ipc", "1000", "--epochs", "1", "--out", str(i.tmp / "ev"),
                              "--device", "cpu"], ["--ipc 1000 is larger than class"]),
    "dd0 with one epoch (decay before it)": (
        eval_main, lambda i: ["--baseline", "random", "--ipc", "1", "--protocol", "dd0", "--epochs", "1", "--out",
                              str(i.tmp / "ev"), "--device", "cpu"], ["dd0 with epochs 1", "pass --epochs 2 or more"]),
    "ipc larger than a class (real init)": (distill_main, lambda i: i.distill("--ipc", "1000"),
                                            ["--ipc 1000 is larger than class", "lower --ipc"]),
    "truncated expert": (distill_main, lambda i: i.distill(buffer=i.damaged_store("truncate")),
                         ["expert file", "corrupted or truncated", "delete it"]),
    "bit-flipped expert": (distill_main, lambda i: i.distill(buffer=i.damaged_store("bitflip")),
                           ["checksum mismatch", "delete it"]),
    "truncated synthetic set": (eval_main, lambda i: ["--synset", i.damaged_synset("truncate"), "--device", "cpu"],
                                ["synset.safetensors is corrupted or truncated", "regenerate"]),
    "bit-flipped synthetic set": (eval_main, lambda i: ["--synset", i.damaged_synset("bitflip"), "--device", "cpu"],
                                  ["checksum mismatch", "regenerate"]),
    "synthetic set of another dataset": (eval_main, lambda i: ["--synset", str(i.synset), "--dataset", "mnist"],
                                         ["distilled on digits, not mnist", "drop --dataset"]),
    "malformed YAML": (distill_main, lambda i: ["--config", i.file("p.yaml", "lr_img: [1,\n")],
                       ["not valid YAML at line", "fix the syntax"]),
    "unknown YAML key": (distill_main, lambda i: ["--config", i.file("p.yaml", "lr_imgg: 10\n")],
                         ["unknown key 'lr_imgg'", "lr_img", "--help"]),
    "unknown flag": (distill_main, lambda i: ["--lr-imgg", "10"], ["unrecognized arguments: --lr-imgg", "--help"]),
    "missing config file": (eval_main, lambda i: ["--config", str(i.tmp / "nope.yaml")],
                            ["nope.yaml does not exist", "experiments/"]),
    "zero size": (buffer_main, lambda i: ["--num-experts", "0"], ["--num-experts must be positive, got 0"]),
    "negative size": (distill_main, lambda i: i.distill("--ipc", "-1"), ["--ipc must be positive, got -1"]),
    "wrong flag type": (distill_main, lambda i: ["--iterations", "many"], ["'iterations' must be an int", "'many'"]),
    "wrong YAML type": (eval_main, lambda i: ["--config", i.file("p.yaml", "runs: [1, 2]\n")],
                        ["'runs' must be an int"]),
    "unknown --unroll": (distill_main, lambda i: ["--unroll", "nope"], ["--unroll: invalid choice: 'nope'"]),
    "unknown --labels": (eval_main, lambda i: ["--synset", str(i.synset), "--labels", "fuzzy"],
                         ["unknown --labels setting 'fuzzy'", "choose from auto, hard, soft"]),
    "unknown --augment": (eval_main, lambda i: ["--synset", str(i.synset), "--augment", "mixup"],
                          ["unknown --augment setting 'mixup'", "choose from dsa, none"]),
    "soft labels of a hard set": (eval_main, lambda i: ["--synset", str(i.synset), "--labels", "soft"],
                                  ["--labels soft needs a set with soft labels", "use --labels hard or auto"]),
    "missing synthetic set": (eval_main, lambda i: ["--synset", str(i.tmp / "none")],
                              ["does not exist", "pass the folder written by dd.distill"]),
    "unknown device": (buffer_main, lambda i: ["--device", "tpu9"], ["unknown device 'tpu9'", "auto, cpu"]),
    "malicious legacy pickle": (buffer_main, malicious_buffer, ["not a plain replay buffer", "refusing to unpickle"]),
    "YAML that is not UTF-8": (distill_main, lambda i: ["--config", i.file("p.yaml", b"lr_img: \xff\xfe10\n")],
                               ["is not UTF-8 text", "save it as UTF-8"]),
    "an iteration count past a float's range": (distill_main, lambda i: i.distill("--iterations", "1e400"),
                                                ["'iterations' must be an int", "'1e400'"]),
    "a fractional iteration count": (distill_main, lambda i: i.distill("--iterations", "2.5"),
                                     ["'iterations' must be an int"]),
    "negative eval lr": (eval_main, lambda i: ["--synset", str(i.synset), "--lr", "-1"],
                         ["--lr must be a positive finite learning rate, got -1.0"]),
    "eval --out that is a file": (eval_main, lambda i: ["--synset", str(i.synset), "--out", i.file("out", "x")],
                                  ["--out", "is a file, not a folder"]),
    "results.json of something else": (eval_main, lambda i: ["--synset", str(i.synset), "--out", i.foreign_results()],
                                       ["is not a dd.eval results file", "pass another --out"]),
    "expert shape from a foreign manifest": (distill_main, lambda i: i.distill(buffer=i.foreign_manifest()),
                                             ["manifest.json describes experts of shape", "the manifest is not this"]),
}


@pytest.mark.parametrize("case", cases_on_experts_as_e2e(CASES))
def test_bad_input_is_one_clear_line(case, tmp_path, request, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a case that slips through writes nothing into the repository
    main, make_argv, words = CASES[case]
    inputs = Inputs(tmp_path, request)
    argv = make_argv(inputs)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]  # splitlines also splits tqdm's \r redraws
    assert sum(line.startswith("error: ") for line in lines) == 1 and lines[-1].startswith("error: "), err
    for word in words:
        assert word in lines[-1], f"{word!r} not in {lines[-1]!r}"
    assert not (tmp_path / "executed").exists(), "a pickled payload ran"


def test_decompression_bomb_is_one_line(tmp_path, request, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = Inputs(tmp_path, request).bomb_folder(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(buffer_main, argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "big.png has more pixels than PIL decodes safely" in err.splitlines()[-1]


def test_a_failed_import_leaves_no_empty_store(tmp_path, request, capsys):
    argv = malicious_buffer(Inputs(tmp_path, request))
    with pytest.raises(SystemExit):
        run_cli(buffer_main, argv)
    assert not list((tmp_path / "b").glob("*/*/*")), "an empty store was left behind"


def test_the_malicious_payload_would_run_if_unpickled(tmp_path):
    """The check above can fail: loaded without weights_only, the same kind of file runs its payload."""
    path = tmp_path / "evil.pt"
    torch.save([WritesMarker(tmp_path / "ran")], path)
    torch.load(path, weights_only=False)
    assert (tmp_path / "ran").exists()
