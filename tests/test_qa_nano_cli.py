"""QA of the commands around the nano world where no test looked: `polyvis nano clip|vary train`
(flags checked before training, errors naming the flag), `python -m polyvis.nano.probes`
(argument mistakes are one line), `polyvis init-model` / `cache-features` (--set repeated,
--out, --device), and `polyvis demo` (its flags checked before the world is built)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from polyvis.cli import build_parser, main
from polyvis.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
NANO_TINY = str(ROOT / "configs" / "nano-tiny.yaml")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from polyvis.data.synthetic import generate

    out = tmp_path_factory.mktemp("qa-nano-cli")
    generate(["scene", "ocr"], n=10, seed=0, out=out, image_size=64, progress=False)
    return out


def _error(capsys: pytest.CaptureFixture) -> str:
    """The one stderr line of a refused command."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def train(*args, **kwargs):
        raise AssertionError("trained although a flag was wrong")

    monkeypatch.setattr("polyvis.nano.vary.train_vary", train)
    monkeypatch.setattr("polyvis.nano.clip.train_clip", train)


def test_train_flags_are_checked_before_training(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _no_training(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("")
    vary = ["nano", "vary", "train", "--images-from", str(data_dir), "--steps", "1"]
    # before: trained to the end, then "File exists" when saving
    assert main([*vary, "--out", str(blocker / "out")]) == 2
    assert _error(capsys) == f"polyvis: error: --out: {blocker} is a file, not a folder"
    # before: a CTC family outside --families added no loss at all, silently
    out = ["--out", str(tmp_path / "o")]
    assert main([*vary, *out, "--families", "ocr", "--aux-families", "ocr,tabel"]) == 2
    assert _error(capsys) == "polyvis: error: --aux-families: tabel not among --families (ocr)"
    assert main([*vary, *out, "--families", " , "]) == 2
    assert _error(capsys).startswith("polyvis: error: --families: names no family")


def test_a_rerun_into_the_same_out_leaves_nothing_of_the_last_one(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Before: a bpe run's decoder/ stayed beside the next (chars) run's encoder, as if its own."""

    def train(dirs, out, settings, progress, eval_dirs):  # what train_vary writes, in short
        (out / "training_log.json").write_text("{}")
        if settings.get("tokenizer") == "bpe":
            (out / "decoder").mkdir()
        return {"expert": "vary-nano", "final_loss": 1.0, "eval": {}}

    monkeypatch.setattr("polyvis.nano.vary.train_vary", train)
    out = tmp_path / "vary"
    vary = ["nano", "vary", "train", "--images-from", str(data_dir), "--out", str(out)]
    assert main([*vary, "--tokenizer", "bpe"]) == 0 and (out / "decoder").is_dir()
    assert main([*vary, "--tokenizer", "chars"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["training_log.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vary"]  # no temporary folder left
    capsys.readouterr()
    # a folder of something else is refused, not emptied
    assert main([*vary[:-1], str(tmp_path)]) == 2
    assert _error(capsys) == (
        f"polyvis: error: --out: {tmp_path} is not empty and holds no expert checkpoint"
    )


def test_a_refused_model_config_is_one_line_naming_the_flag(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Before: huggingface_hub's validation errors and polyvis' EncoderSpec were tracebacks."""
    clip = ["nano", "clip", "train", "--images-from", str(data_dir), "--out", str(tmp_path / "c"),
            "--steps", "1", "--no-progress"]  # fmt: skip
    assert main([*clip, "--vision", "{hidden_size: 30, num_attention_heads: 4}"]) == 2
    assert _error(capsys) == (
        "polyvis: error: --text/--vision: The hidden size (30) is not a multiple of the number "
        "of attention heads (4)."
    )
    vary = ["nano", "vary", "train", "--images-from", str(data_dir), "--families", "ocr",
            "--out", str(tmp_path / "v"), "--steps", "1", "--no-progress"]  # fmt: skip
    assert main([*vary, "--config", "{hidden_size: 64}"]) == 2
    assert _error(capsys).startswith("polyvis: error: --config: 'config' needs a 'model_type'")
    assert main([*vary, "--config", "{model_type: resnet, hidden_sizes: x}"]) == 2
    # refused where the encoder is built, so the message names the one flag at fault
    assert _error(capsys).startswith(
        "polyvis: error: --config: Field 'hidden_sizes' with value 'x'"
    )
    # settings errors name the flag that was typed, not the trainer's field
    assert main([*vary, "--max-target-len", "0"]) == 2
    assert _error(capsys) == "polyvis: error: --max-target-len: Input should be greater than 0"


def test_lm_nano_decoder_without_model_type_is_a_config_error() -> None:
    from polyvis.nano.lm import LmSettings, _build

    class Tok:
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

        def __len__(self) -> int:
            return 300

    with pytest.raises(ConfigError, match=r"^decoder: needs 'model_type'$"):
        _build(LmSettings(decoder={"hidden_size": 32}), Tok())


def test_probes_argument_mistakes_are_one_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from polyvis.nano.probes import main as probes

    prog = "python -m polyvis.nano.probes: error:"
    cases = {
        ("--expert", "clip"): "--expert: 'clip' must look like NAME=DIR[:LAYERS]",
        ("--expert", f"clip={tmp_path}"): f"--expert: {tmp_path}: not an expert checkpoint",
        ("--data", str(tmp_path / "nope")): f"--data: {tmp_path / 'nope'}: folder not found",
        ("--max-train", "0", "--data", str(data_dir)): "--max-train: must be at least 1",
    }
    for argv, message in cases.items():
        assert probes(list(argv)) == 2, argv
        assert _error(capsys).startswith(f"{prog} {message}")
    (tmp_path / "config.json").write_text("{}")
    assert probes(["--expert", f"clip={tmp_path}:x", "--data", str(data_dir)]) == 2
    assert (
        _error(capsys) == f"{prog} --expert: clip: layers 'x' must be integers like -3,-1, or all"
    )


def test_a_probe_with_under_five_training_images_scores() -> None:
    """Before: the inner split held nothing out, and indexing by an empty float tensor failed."""
    from polyvis.nano.probe_fit import Task, score_tasks

    z = torch.arange(12.0).view(4, 3)
    task = Task("colour", [0, 1, 2], ["red", "blue", "red"], [3], ["red"])
    score = score_tasks(z, [task])["colour"]
    assert (score.n, score.correct) == (1, 1)


def test_set_repeated_adds_to_the_overrides() -> None:
    """Before: `--set A --set B` kept only B, silently (init-model, cache-features)."""
    parser = build_parser()
    for command in (["init-model", NANO_TINY, "--out", "o"], ["cache-features", NANO_TINY]):
        args = parser.parse_args([*command, "--set", "a=1", "b=2", "--set", "c=3"])
        assert args.set == ["a=1", "b=2", "c=3"]


def test_init_model_out_that_is_a_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["init-model", NANO_TINY, "--out", str(blocker)]) == 2
    assert _error(capsys) == f"polyvis: error: --out: {blocker} is a file, not a folder"


def test_cache_features_without_data_is_an_error(capsys: pytest.CaptureFixture) -> None:
    """Before: it built the model, printed "0 distinct image(s)" and succeeded."""
    assert main(["cache-features", NANO_TINY]) == 2
    assert _error(capsys) == (
        "polyvis: error: data: names no records (data.train, data.val or data.synthetic): "
        "nothing to cache"
    )


def test_init_model_into_an_earlier_model_replaces_it_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Before: a two-encoder model's image_processors/dino stayed beside a one-encoder model."""
    out = tmp_path / "model"
    one = "model.encoders=[{name: clip, config: {model_type: clip_vision_model, hidden_size: 32, " \
          "intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, image_size: 32, " \
          "patch_size: 8}}]"  # fmt: skip
    assert main(["init-model", NANO_TINY, "--out", str(out)]) == 0
    assert (out / "image_processors" / "dino").is_dir()
    assert main(["init-model", NANO_TINY, "--out", str(out), "--set", one]) == 0
    assert [p.name for p in (out / "image_processors").iterdir()] == ["clip"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary folder left
    capsys.readouterr()
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["init-model", NANO_TINY, "--out", str(tmp_path)]) == 2
    assert _error(capsys) == f"polyvis: error: --out: {tmp_path} is not empty and holds no model"


def test_a_device_that_is_not_here_is_one_line(capsys: pytest.CaptureFixture) -> None:
    """Before: torch's RuntimeError / AssertionError as a traceback (cache-features, chat, eval)."""
    cache = ["cache-features", NANO_TINY, "--set", "data.synthetic={families: [scene], n: 4}"]
    assert main([*cache, "--device", "gpu0"]) == 2
    assert _error(capsys) == (
        "polyvis: error: --device: 'gpu0' is not a device (e.g. cpu, cuda, cuda:1)"
    )
    if not torch.cuda.is_available():
        assert main([*cache, "--device", "cuda"]) == 2
        assert _error(capsys) == "polyvis: error: --device: 'cuda': no CUDA GPU here (use cpu)"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--jobs", "0"], "--jobs: must be at least 1, got 0"),
        (["--seed", "-1"], "--seed: must be between 0 and 2**32 - 1, got -1"),
    ],
)
def test_demo_flags_are_checked_before_the_world_is_built(
    flags: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """Before: --jobs 0 failed after the data, naming `workers`; --seed -1 built the experts and
    then failed in every run."""

    def run_demo(*args, **kwargs):
        raise AssertionError("the demo started")

    monkeypatch.setattr("polyvis.nano.demo.run_demo", run_demo)
    assert main(["demo", "--quick", "--out", str(tmp_path / "d"), *flags]) == 2
    assert _error(capsys) == f"polyvis: error: {message}"
