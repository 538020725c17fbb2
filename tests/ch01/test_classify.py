"""classify_resnet.py and horse2zebra.py: outputs, the weights policy, one-line errors."""
import imageio.v3 as iio
import pytest
import torch

from ch01_intro import classify_resnet, horse2zebra
from ch01_intro.cyclegan import ResNetGenerator
from ch01_intro.weights import load_state, load_weights, resolve_weights, state_mismatch
from common.errors import DataError, run_cli
from tests.ch01.conftest import write_image, write_labels


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    """One end-to-end run with random weights on a generated image (the only 224 forward here)."""
    folder = tmp_path_factory.mktemp("classify")
    write_image(folder / "dog.png", 240, 300)
    labels = write_labels(folder / "labels.txt")
    return classify_resnet.main(["--random-weights", "--image", str(folder / "dog.png"),
                                 "--labels", str(labels), "--device", "cpu"])


def test_random_weights_run_end_to_end(classified):
    assert classified["logits"].shape == (1, 1000)
    assert torch.isfinite(classified["logits"]).all()
    assert len(classified["top"]) == 5
    assert all(label.startswith("class ") for label, _ in classified["top"])


def test_top5_is_sorted_and_percentages_sum_to_100(classified):
    percent = classify_resnet.percentages(classified["logits"])
    torch.testing.assert_close(percent.sum(dim=1), torch.tensor([100.0]))
    values = [p for _, p in classified["top"]]
    assert values == sorted(values, reverse=True)
    assert values[0] == pytest.approx(float(percent.max()))


def test_top_k_on_a_hand_made_row():
    labels = [f"c{i}" for i in range(4)]
    row = classify_resnet.percentages(torch.tensor([[0.0, 2.0, 1.0, -1.0]]))[0]
    best = classify_resnet.top_k(row, labels, k=2)
    assert [name for name, _ in best] == ["c1", "c2"]
    assert best[0][1] == pytest.approx(100 * torch.softmax(torch.tensor([0.0, 2, 1, -1]), 0)[1])


def test_labels_must_match_the_classes(tmp_path):
    with pytest.raises(DataError, match="999 labels"):
        classify_resnet.load_labels(write_labels(tmp_path / "l.txt", 999))


def test_without_weights_the_script_names_the_download(tmp_path):
    with pytest.raises(DataError, match="python -m common.data download resnet101"):
        classify_resnet.main(["--data-dir", str(tmp_path)])
    with pytest.raises(DataError, match="python -m common.data download resnet101"):
        classify_resnet.main(["--weights", str(tmp_path / "missing.pth")])
    with pytest.raises(DataError, match="python -m common.data download horse2zebra"):
        horse2zebra.main(["--data-dir", str(tmp_path)])


def test_run_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(classify_resnet.main, ["--data-dir", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "download resnet101" in err
    assert "Traceback" not in err


def test_resolve_weights_policy(tmp_path):
    assert resolve_weights(None, True, "p1ch2/x.pth", "x", tmp_path) is None
    (tmp_path / "p1ch2").mkdir()
    (tmp_path / "p1ch2" / "x.pth").write_bytes(b"")
    assert resolve_weights(None, False, "p1ch2/x.pth", "x", tmp_path) == tmp_path / "p1ch2/x.pth"
    assert resolve_weights(str(tmp_path / "p1ch2/x.pth"), False, "other", "x") is not None


def test_load_weights_is_strict(tmp_path):
    small = ResNetGenerator(ngf=4, n_blocks=1)
    torch.save(small.state_dict(), tmp_path / "small.pth")
    other = load_weights(ResNetGenerator(ngf=4, n_blocks=1), tmp_path / "small.pth")
    torch.testing.assert_close(other.state_dict(), small.state_dict())
    with pytest.raises(DataError, match=r"--weights .*small.pth: does not fit ResNetGenerator: "
                       r"10 of its 20 tensors missing \(model.11.conv_block.1.weight, "
                       r"model.11.conv_block.1.bias, model.11.conv_block.5.weight and 7 more\); "
                       r"6 unexpected \(model.11.weight, model.11.bias, model.14.weight and 3 "
                       r"more\)$"):
        load_weights(ResNetGenerator(ngf=4, n_blocks=2), tmp_path / "small.pth")
    (tmp_path / "junk.pth").write_text("junk")
    with pytest.raises(DataError, match="junk.pth: not a readable torch file"):
        load_weights(ResNetGenerator(ngf=4, n_blocks=1), tmp_path / "junk.pth")


@pytest.mark.parametrize("wrapper", ["model_state", "state_dict"])
def test_a_checkpoint_dict_is_unwrapped(tmp_path, wrapper):
    small = ResNetGenerator(ngf=4, n_blocks=1)
    torch.save({wrapper: small.state_dict(), "epoch": 3}, tmp_path / "ckpt.state")
    loaded = load_weights(ResNetGenerator(ngf=4, n_blocks=1), tmp_path / "ckpt.state", "--init")
    torch.testing.assert_close(loaded.state_dict(), small.state_dict())


def test_state_mismatch_in_few_words():
    model = torch.nn.Linear(3, 2)
    assert state_mismatch(model, model.state_dict()) == ""
    assert state_mismatch(model, torch.zeros(3)) == ("not a state_dict (a dict of named "
                                                     "tensors), found a Tensor")
    assert state_mismatch(model, {1: torch.zeros(3)}).startswith("not a state_dict")
    assert state_mismatch(model, {}) == "none of its 2 tensors is in the file, which is empty"
    assert state_mismatch(model, {"weight": torch.zeros(2, 3), "bias": 0}) == (
        "1 not tensors (bias is an int)")
    assert state_mismatch(model, {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}) == (
        "1 of another shape (weight: (2, 4) in the file, (2, 3) in the model)")
    long = {f"{'layer' * 20}.{i}": torch.zeros(1) for i in range(500)}   # 100-character keys
    why = state_mismatch(model, long)
    assert why.startswith("none of its 2 tensors is in the file, which holds 500 others (")
    assert why.endswith(" and 497 more)") and len(why) < 240
    why = state_mismatch(model, {"weight": torch.zeros(2, 3), **long})
    assert why.startswith("1 of its 2 tensors missing (bias); 500 unexpected (") and len(why) <= 240


def test_load_state_is_one_line_also_for_what_torch_refuses():
    model = torch.nn.Linear(3, 2)
    state = {"weight": torch.zeros(2, 3).to_sparse(), "bias": torch.zeros(2)}  # cannot be copied
    with pytest.raises(DataError, match=r"^--init x.pt: does not fit Linear \(Error") as e:
        load_state(model, state, "--init x.pt")
    assert "\n" not in str(e.value) and len(str(e.value)) < 160


def test_horse2zebra_with_a_weights_file_keeps_the_image_size(tmp_path):
    torch.manual_seed(1)
    torch.save(ResNetGenerator().state_dict(), tmp_path / "g.pth")       # the book's layout
    write_image(tmp_path / "horse.png", 90, 130)
    result = horse2zebra.main(["--weights", str(tmp_path / "g.pth"), "--size", "42",
                               "--image", str(tmp_path / "horse.png"),
                               "--out", str(tmp_path / "zebra.png"), "--device", "cpu"])
    assert result["input"].shape == (1, 3, 40, 60)    # 42 x 60.6 -> 42 x 60 -> multiples of 4
    assert result["output"].shape == result["input"].shape
    assert result["output"].min() >= -1 and result["output"].max() <= 1
    assert iio.imread(tmp_path / "zebra.png").shape == (40, 60, 3)


def test_horse2zebra_to_image_maps_tanh_range_to_bytes():
    out = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    assert horse2zebra.to_image(out).tolist() == [[[0, 128, 255]]]


def test_horse2zebra_rejects_other_formats(tmp_path):
    with pytest.raises(DataError, match=".jpg or .png"):
        horse2zebra.main(["--random-weights", "--out", str(tmp_path / "z.bmp")])
