"""The chapter 8 convnets: the book's parameter counts, shapes, dropout, batch norm, residuals."""
import pytest
import torch

from ch01_intro.resnet import count_parameters
from ch08_convnets import models
from ch08_convnets.models import (
    MODELS,
    Net,
    NetBatchNorm,
    NetDropout,
    NetRes,
    NetResDeep,
    NetWidth,
    ResBlock,
    load_book_net,
    make_model,
)
from common.errors import DataError

BOOK_COUNTS = {"net": 18_090, "width": 38_386, "dropout": 38_386, "batchnorm": 38_482,
               "depth": 16_130, "res": 16_130, "resdeep": 159_330}


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_counts_and_output_shape(name):
    model = make_model(name).eval()
    assert count_parameters(model) == BOOK_COUNTS[name]
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 2)


def test_net_parameters_tensor_by_tensor():
    assert [p.numel() for p in Net().parameters()] == [432, 16, 1152, 8, 16384, 32, 64, 2]


def test_n_chans1_is_honoured():
    model = NetWidth(n_chans1=16)
    assert model.conv1.out_channels == 16 and model.conv2.out_channels == 8
    assert count_parameters(model) == (3 * 9 * 16 + 16) + (16 * 9 * 8 + 8) + (512 * 32 + 32) + 66
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_resdeep_blocks_are_distinct_objects_with_their_own_weights():
    model = NetResDeep(n_blocks=4)
    blocks = list(model.resblocks)
    assert len({id(b) for b in blocks}) == 4
    assert len({b.conv.weight.data_ptr() for b in blocks}) == 4
    assert not torch.equal(blocks[0].conv.weight, blocks[1].conv.weight)
    per_block = 32 * 32 * 9 + 2 * 32
    assert count_parameters(NetResDeep(n_blocks=100)) - count_parameters(model) == 96 * per_block


def test_resblock_init_and_shape():
    block = ResBlock(8)
    assert block.conv.bias is None
    assert block.batch_norm.weight.eq(0.5).all() and block.batch_norm.bias.eq(0).all()
    x = torch.randn(2, 8, 16, 16)
    assert block(x).shape == x.shape
    block.eval()
    with torch.no_grad():
        assert (block(x) >= x - 1e-6).all()        # relu(...) >= 0 is added to the input


def test_netres_skip_path_changes_the_output():
    torch.manual_seed(0)
    res = NetRes().eval()
    x = torch.randn(2, 3, 32, 32)
    captured = {}
    res.conv3.register_forward_hook(lambda m, inp, out: captured.update(inp=inp[0], out=out))
    res(x)
    assert captured["inp"].shape == captured["out"].shape == (2, 16, 8, 8)   # addable


def test_dropout_differs_in_training_and_not_in_eval():
    torch.manual_seed(0)
    model, x = NetDropout(), torch.randn(8, 3, 32, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_batchnorm_running_stats_update_only_in_training():
    model, x = NetBatchNorm(), torch.randn(8, 3, 32, 32) * 2 + 1
    before = model.conv1_batchnorm.running_mean.clone()
    model.eval()
    with torch.no_grad():
        model(x)
    torch.testing.assert_close(model.conv1_batchnorm.running_mean, before)
    model.train()
    with torch.no_grad():
        model(x)
    assert not torch.allclose(model.conv1_batchnorm.running_mean, before)
    assert model.conv1_batchnorm.num_batches_tracked == 1


def test_unknown_model_name():
    with pytest.raises(ValueError, match="one of"):
        make_model("vgg")


def test_models_script_prints_the_counts(capsys):
    assert models.main([]) == BOOK_COUNTS
    assert "18,090" in capsys.readouterr().out


@pytest.mark.realdata
def test_book_checkpoint_loads_strictly_into_net(book_file):
    path = book_file(models.BOOK_NET_FILE)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == \
        {k: tuple(v.shape) for k, v in Net().state_dict().items()}
    model = load_book_net(path.parents[1]).eval()
    torch.testing.assert_close(model.fc2.weight, state["fc2.weight"])
    with torch.no_grad():
        logits = model(torch.randn(16, 3, 32, 32))
    assert logits.shape == (16, 2) and torch.isfinite(logits).all()
    with pytest.raises(RuntimeError):
        NetWidth().load_state_dict(state, strict=True)


def test_missing_book_checkpoint_names_the_download(tmp_path):
    with pytest.raises(DataError, match="download birds-vs-airplanes"):
        load_book_net(tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(MODELS))
def test_cpu_and_gpu_outputs_agree(cuda, monkeypatch, name):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model, x = make_model(name).eval(), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        actual = model.to(cuda)(x.to(cuda)).cpu()
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=1e-4)
