"""fp32 / bf16 / int8 inference versions of LunaModel and the U-Net (ch13_segment/precision.py).

Small models on fixed inputs; the int8 ones calibrated on batches drawn like the inputs. The
tolerances are stated relative to each output's own range where it has one, with a margin of
3-5x over what these seeds give (noted beside each), so that another CPU's rounding does not
trip them.
"""
import copy
import io

import pytest
import torch

from ch10_luna.model import LunaModel
from ch13_segment import precision
from ch13_segment.model import UNetWrapper

CROP = (16, 16, 16)


@pytest.fixture
def int8():
    """Skip, with the reason, where torchao (or oneDNN) is missing."""
    why = precision.int8_unavailable()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def programs():
    """Reference int8 programs of the small models, each quantized once for the module:
    convert_pt2e alone takes ~5-15 s (a QAT conv-bn pass exports 96 patterns when a graph has
    a batch norm). {"luna": (model, program), "unet": (model, program)}."""
    why = precision.int8_unavailable()
    if why:
        pytest.skip(why)
    luna, unet = small_luna(), small_unet()
    return {"luna": (luna, precision.quantize_int8(luna, (torch.zeros(8, 1, *CROP),),
                                                   batches((8, 1, *CROP), 4, 3))),
            "unet": (unet, precision.quantize_int8(unet, (torch.zeros(4, 7, 32, 32),),
                                                   batches((4, 7, 32, 32), 4, 4)))}


def small_luna():
    torch.manual_seed(0)
    return LunaModel(conv_channels=4, crop_irc=CROP).eval()


def small_unet():
    torch.manual_seed(0)
    return UNetWrapper(in_channels=7, n_classes=1, depth=2, wf=2, padding=True,
                       batch_norm=True).eval()


def batches(shape, count, seed):
    """`count` batches of unit-scale inputs (the untrained batch norms expect that)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(count)]


def spread(t):
    return float(t.max() - t.min())


def test_fp32_and_bf16_keep_the_outputs_and_agree():
    luna, unet = small_luna(), small_unet()
    x, s = batches((4, 1, *CROP), 1, 1)[0], batches((2, 7, 32, 32), 1, 2)[0]
    with torch.no_grad():
        logits, probs = luna(x)
        seg = unet(s)
    for p in ("fp32", "bf16"):
        out_logits, out_probs = precision.prepare(luna, p)(x)
        out_seg = precision.prepare(unet, p)(s)
        assert out_logits.shape == out_probs.shape == (4, 2) and out_seg.shape == (2, 1, 32, 32)
        assert out_logits.dtype == out_seg.dtype == torch.float32
        # bf16 keeps 8 bits of mantissa; these seeds give 0.3% of the logits' spread, 0.015 in
        # probability and 0.002 in the sums
        logit_tol, seg_tol, sum_tol = (1e-5, 1e-5, 1e-5) if p == "fp32" else (0.01, 0.05, 0.006)
        torch.testing.assert_close(out_probs.sum(dim=1), torch.ones(4), rtol=0, atol=sum_tol)
        assert (out_logits - logits).abs().max() <= logit_tol * spread(logits)
        assert (out_seg - seg).abs().max() <= seg_tol


def test_prepare_leaves_the_model_alone():
    luna = small_luna()
    before = {k: v.clone() for k, v in luna.state_dict().items()}
    precision.prepare(luna, "bf16")
    assert all(torch.equal(before[k], v) for k, v in luna.state_dict().items())
    assert next(luna.parameters()).is_contiguous()                 # still NCDHW
    with pytest.raises(ValueError, match="precision"):
        precision.prepare(luna, "fp16")


def test_a_prepared_unet_takes_slices_of_any_size():
    unet = small_unet()
    s = batches((2, 7, 29, 26), 1, 3)[0]                         # not multiples of 2
    out = precision.prepare(unet, "fp32")(s)
    padded = torch.nn.functional.pad(s, (0, 0, 0, 1), value=-1000.0)   # 30 x 26
    with torch.no_grad():
        expected = unet(padded)[..., :29, :]
    assert out.shape == (2, 1, 29, 26)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)  # channels-last sums


def test_int8_agrees_with_fp32(programs):
    (luna, luna_int8), (unet, unet_int8) = programs["luna"], programs["unet"]
    x, s = batches((16, 1, *CROP), 1, 1)[0], batches((4, 7, 32, 32), 1, 2)[0]
    run_luna = precision.int8_runner(luna_int8, (x,), compiled=False)
    run_unet = precision.int8_runner(unet_int8, (s,), compiled=False)
    with torch.no_grad():
        logits, _ = luna(x)
        seg = unet(s)
    out_logits, out_probs = run_luna(x)
    out_seg = run_unet(s)
    assert out_logits.shape == out_probs.shape == (16, 2) and out_seg.shape == seg.shape
    torch.testing.assert_close(out_probs.sum(dim=1), torch.ones(16))
    # these seeds: 0.6% of the logits' spread; at most 0.09 in probability and 1.0% of the
    # pixels flipped at 0.5 for the (random, so borderline-heavy) U-Net
    assert (out_logits - logits).abs().max() <= 0.03 * spread(logits)
    assert (out_seg - seg).abs().max() <= 0.25
    assert ((out_seg > 0.5) != (seg > 0.5)).float().mean() <= 0.03


def test_calibration_sets_the_quantization_ranges(int8):
    """The observers start empty and take the calibration data's range: 10x the data, 10x the
    input's scale. A skipped calibration leaves every range at (inf, -inf)."""
    luna, x = small_luna(), torch.randn(4, 1, *CROP)
    scales = []
    for k in (1.0, 10.0):
        prepared = precision.prepare_int8(luna, (x,))
        assert all(lo == float("inf") for lo, _ in precision.observer_ranges(prepared).values())
        precision.calibrate(prepared, [x * k])
        ranges = precision.observer_ranges(prepared)
        assert all(lo <= hi for lo, hi in ranges.values())
        first = next(m for m in (prepared.get_submodule(n.target) for n in prepared.graph.nodes
                                 if n.op == "call_module" and n.target != "_guards_fn")
                     if m.min_val.dim() == 0)          # the input's, after the batch norm
        scales.append(float(first.calculate_qparams()[0]))
    assert scales[1] == pytest.approx(10 * scales[0], rel=0.2)
    with pytest.raises(ValueError, match="at least one batch"):
        precision.calibrate(prepared, [])


def test_converted_program_holds_int8_weights(programs):
    _, program = programs["luna"]
    scales = precision.activation_scales(program)
    weights = [t for name, t in program.named_buffers() if t.dtype == torch.int8]
    assert len(weights) == 9 and len(scales) >= 9 and all(s > 0 for s in scales)  # 8 conv, head


def test_lowered_conv3d_is_the_reference_int8_program(programs):
    """lower_conv3d swaps every quantized Conv3d for oneDNN's int8 kernel and every max-pool
    for the uint8 one; the outputs stay those of the reference program to within a few
    quantization steps (requantization rounds in another order)."""
    _, program = programs["luna"]
    x = batches((8, 1, *CROP), 1, 5)[0]
    with torch.no_grad():
        ref_logits, _ = program(x)
        lowered, count = precision.lower_conv3d(copy.deepcopy(program))
        logits, probs = lowered(x)
    targets = {n.target for n in lowered.graph.nodes}
    assert count == 8 and torch.ops.aten.conv3d.default not in targets
    assert precision.max_pool_uint8 in targets
    assert (logits - ref_logits).abs().max() <= 0.05 * spread(ref_logits)


def test_max_pool_uint8_is_max_pool3d():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (2, 3, 5, 6, 7), dtype=torch.uint8, generator=g)
    expected = torch.nn.functional.max_pool3d(x.float(), 2, 2)            # odd sides: floor
    out = precision.max_pool_uint8(x.contiguous(memory_format=torch.channels_last_3d))
    assert out.dtype == torch.uint8 and torch.equal(out.float(), expected)


def test_fixed_batch_pads_and_splits():
    seen = []

    def run(x):
        seen.append(x.shape[0])
        return x * 2, x.sum(dim=1)
    x = torch.arange(10.0).reshape(5, 2)
    doubled, sums = precision.fixed_batch(run, 4)(x)
    assert seen == [4, 4] and doubled.shape == (5, 2) and sums.shape == (5,)
    torch.testing.assert_close(doubled, x * 2)


def test_int8_program_saves_and_loads(programs, tmp_path):
    _, program = programs["unet"]
    s = torch.randn(2, 7, 32, 32)
    size = precision.save_int8(program, (s,), tmp_path / "unet_int8.pt2")
    assert size == (tmp_path / "unet_int8.pt2").stat().st_size
    assert precision.save_int8(program, (s,), io.BytesIO()) == pytest.approx(size, rel=0.01)
    loaded = precision.load_int8(tmp_path / "unet_int8.pt2")
    assert loaded.meta["spatial_multiple"] == 2
    other = torch.randn(3, 7, 48, 40)                     # another batch and slice size
    with torch.no_grad():
        torch.testing.assert_close(loaded(other), program(other))


def test_calibration_inputs_come_from_the_training_series(seg_luna):
    train_uids = sorted(seg_luna.series)[1::3] + sorted(seg_luna.series)[2::3]
    crops = precision.calibration_crops(seg_luna, train_uids, count=6, batch_size=4)
    assert [c.shape for c in crops] == [(4, 1, 32, 48, 48), (2, 1, 32, 48, 48)]
    slices = precision.calibration_slices(seg_luna, train_uids, count=3, batch_size=2)
    assert sum(len(b) for b in slices) == 3
    assert all(b.shape[1] == 7 and b.shape[2] % 4 == 0 == b.shape[3] % 4 for b in slices)
    assert min(float(b.min()) for b in slices) >= -1000            # HU, air padding included


def test_calibration_without_training_series_uses_the_analysed_ones(seg_luna, tmp_path):
    one = sorted(seg_luna.series)[0]
    slices, crops, where = precision.calibration_sets(seg_luna, [one], 4, val_stride=1000)
    assert where.startswith("the training series")               # 1000: every series but one
    lonely = type(seg_luna)(**{**vars(seg_luna), "series": {one: seg_luna.series[one]}})
    slices, crops, where = precision.calibration_sets(lonely, [one], 4)
    assert where.startswith("the analysed series")
    assert all(b.shape[1] == 7 for b in slices.batches())
    assert sum(len(b) for b in crops.batches()) == 64


@pytest.mark.slow
def test_compiled_int8_runs_both_models(programs):
    """The fast paths (inductor for the U-Net; lower_conv3d then inductor for LunaModel) give
    the reference program's outputs, for a short batch too."""
    for key, example in (("luna", torch.randn(8, 1, *CROP)), ("unet", torch.randn(4, 7, 32, 32))):
        _, program = programs[key]
        run = precision.int8_runner(program, (example,), compiled=True)
        with torch.no_grad():
            expected = precision.as_float(program(example[:3]))
        out = run(example[:3])
        if key == "luna":
            expected, out = expected[0], out[0]           # the logits
        assert out.shape == expected.shape
        assert (out - expected).abs().max() <= 0.05 * max(spread(expected), 1.0)


# --------------------------------------------------------------------------- compiled
def test_compiled_ahead_of_time_gives_the_eager_outputs_and_is_kept(tmp_path):
    """AOTInductor with freezing: fp32 outputs of the eager model to float rounding, a short
    batch padded, and a second run loads the kept program instead of compiling."""
    said = []
    unet, s = small_unet(), batches((3, 7, 30, 26), 1, 5)[0]            # batches of 2 and 1
    run = precision.prepare(unet, "fp32", batch_size=2, compiled=True, cache_dir=tmp_path)
    out = run(s)
    with torch.no_grad():
        expected = precision.prepare(unet, "fp32")(s)
    assert out.shape == expected.shape == (3, 1, 30, 26)
    assert (out - expected).abs().max() <= 1e-5                  # seen: 1e-7
    kept = list(tmp_path.glob("UNetWrapper-fp32-2x7x30x26-*.pt2"))
    assert len(kept) == 1
    again = precision.aot_runner(unet, "fp32", 2, tmp_path, announce=said.append)
    torch.testing.assert_close(again(s[:2]), out[:2], rtol=0, atol=0)  # the program, read back
    assert said == []                                            # nothing compiled, no warning


def test_a_compiled_classifier_gives_the_eager_logits(tmp_path):
    """Untrained, on HU-scale crops, its logits run to the hundreds: a layout or batch-norm
    folding error would show (a symbolic batch did, in torch 2.13)."""
    luna, x = small_luna(), batches((3, 1, *CROP), 1, 8)[0] * 300 - 500
    with torch.no_grad():
        expected, _ = luna(x)
    for batch_size in (None, 2):                       # shapes as they come, or fixed
        logits, probs = precision.prepare(luna, "fp32", batch_size=batch_size, compiled=True,
                                          cache_dir=tmp_path)(x)
        assert (logits - expected).abs().max() <= 1e-4 * expected.abs().max()
        torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))


def test_where_compiling_fails_one_warning_and_the_eager_model(tmp_path, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nmore detail")
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiler)
    said = []
    luna, x = small_luna(), batches((3, 1, *CROP), 1, 6)[0]
    run = precision.aot_runner(luna, "fp32", 4, tmp_path, announce=said.append)
    logits, probs = run(x)
    with torch.no_grad():
        torch.testing.assert_close(logits, luna(x)[0], rtol=1e-4, atol=1e-5)
    assert said == ["warning: --compile: LunaModel could not be compiled here (RuntimeError: "
                    "no C++ compiler found); it runs eagerly"]
    assert not list(tmp_path.iterdir())                          # nothing half-written


def test_a_damaged_kept_program_is_compiled_again(tmp_path):
    luna, x = small_luna(), batches((2, 1, *CROP), 1, 7)[0]
    precision.aot_runner(luna, "fp32", 2, tmp_path, announce=lambda _: None)(x)
    (kept,) = tmp_path.glob("*.pt2")
    kept.write_bytes(b"not a zip")
    said = []
    logits, _ = precision.aot_runner(luna, "fp32", 2, tmp_path, announce=said.append)(x)
    assert said[0].startswith(f"warning: {kept}: not a loadable program") and len(said) == 2
    with torch.no_grad():
        torch.testing.assert_close(logits, luna(x)[0], rtol=1e-4, atol=1e-5)


def test_activations_keep_to_seven_bits_without_vnni(int8, monkeypatch):
    """Without VNNI, oneDNN's u8 x s8 pairs sum into int16 and saturate at 8-bit activations:
    the quantizer asks for 0-127 there and 0-255 where VNNI is."""
    for vnni, top in ((False, 127), (True, 255)):
        monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda vnni=vnni: vnni)
        assert precision.make_quantizer().global_config.input_activation.quant_max == top
