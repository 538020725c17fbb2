"""torch.export with a dynamic batch, AOTInductor .pt2 packages reloaded and compared with eager."""
import pytest
import torch

from ch15_deploy import export_aoti
from ch15_deploy.classifier import load_classifier
from ch15_deploy.export_jit import load_unet

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
              pytest.mark.filterwarnings(r"ignore:.*torch\.jit.* is deprecated:DeprecationWarning")]


def test_export_keeps_the_batch_dimension_symbolic(hu_model, crop):
    program, dynamic = export_aoti.export_program(hu_model, (torch.stack([crop, crop]),))
    assert dynamic
    (batch_range,) = program.range_constraints.values()
    assert (batch_range.lower, batch_range.upper) == (1, 64)
    x = torch.stack([crop, crop.flip(-1), crop.flip(-2)])          # 3, not the example's 2
    for a, b in zip(program.module()(x), hu_model(x)):
        torch.testing.assert_close(a, b)


class PairsOnly(torch.nn.Module):
    """A forward that only works for a batch of 2: export cannot keep that dimension dynamic."""

    def forward(self, x):
        return x.reshape(2, -1).sum(1)


def test_export_falls_back_to_a_static_batch(capsys):
    program, dynamic = export_aoti.export_program(PairsOnly(), (torch.randn(2, 4),))
    assert not dynamic and not program.range_constraints
    torch.testing.assert_close(program.module()(torch.ones(2, 4)), torch.full((2,), 4.0))
    assert "dynamic batch refused" in capsys.readouterr().out


@pytest.mark.slow          # two AOTInductor compilations, 25-60 s each on 2 busy cores
def test_main_compiles_both_models_and_they_match_eager(tmp_path):
    result = export_aoti.main(["--random-weights", "--out", str(tmp_path)])
    luna, unet = result["luna"], result["unet"]
    assert luna["dynamic"] and unet["dynamic"]
    assert luna["path"].suffix == ".pt2" and luna["path"].exists() and unet["path"].exists()
    # batches of 1, 2 and 3 through one package: the batch stayed dynamic after compiling
    assert {shape[0] for shape in luna["diffs"]} == {1, 2, 3}
    assert {shape[0] for shape in unet["diffs"]} == {1, 2, 3}
    model = load_classifier(random_weights=True)
    x = torch.stack([torch.full((1, 32, 48, 48), -500.0), torch.zeros(1, 32, 48, 48)])
    with torch.inference_mode():
        scale = float(model(x)[0].abs().max())                     # untrained: logits ~ 100s
    assert max(luna["diffs"].values()) < 1e-4 * max(scale, 1.0)
    assert max(unet["diffs"].values()) < 1e-4                     # sigmoid outputs in [0, 1]
    # the reloaded package is a callable with the module's output structure
    logits, probs = luna["compiled"](x)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    if "cpp_diff" in result:                                         # cpp/build.sh was run
        assert result["cpp_diff"] < 1e-4 * max(scale, 1.0)


def test_compiled_unet_runs_other_batch_sizes_only_within_the_range():
    program, dynamic = export_aoti.export_program(load_unet(), (torch.randn(2, 7, 32, 32),),
                                                  max_batch=4)
    assert dynamic
    with pytest.raises(AssertionError, match=r"Guard failed: .*<= 4"):
        program.module()(torch.randn(5, 7, 32, 32))                 # over the declared maximum
