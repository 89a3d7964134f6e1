"""The models reproduce the original code's outputs from the parity fixtures, load original-layout
checkpoints, flush subnormal weights, and reject bad input clearly."""
import math

import pytest
import torch

from lowlight_fast import models as M
from tests import parity


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------- parity (original outputs)
@pytest.mark.parametrize("fused", [False, True])
def test_zerodce_reproduces_original_outputs(fused):
    d = parity.load("zerodce")
    model = M.ZeroDCE(fused=fused)
    model.load_state_dict(parity.params(d))
    with torch.no_grad():
        e4, e8, r = model(d["input"])
    _close(r, d["r"])
    _close(e4, d["enhance_image_1"])
    _close(e8, d["enhance_image"])


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("scale", [1, 4, 12])
def test_zerodcepp_reproduces_original_outputs(scale, fused):
    d = parity.load("zerodcepp")
    model = M.ZeroDCEPlusPlus(scale_factor=scale, fused=fused)
    model.load_state_dict(parity.params(d))
    with torch.no_grad():
        enhanced, x_r = model(d["input"])
        only = model.enhance_image(d["input"])
    _close(x_r, d[f"sf{scale}/x_r"])
    _close(enhanced, d[f"sf{scale}/enhance_image"])
    _close(only, d[f"sf{scale}/enhance_image"])


def test_sci_network_reproduces_original_stages():
    d = parity.load("sci")
    net = M.SCINetwork(stage=3).eval()
    net.load_state_dict(parity.params(d))
    with torch.no_grad():
        illu, refl, inputs, att = net(d["input"])
    assert len(illu) == len(refl) == len(inputs) == len(att) == 3
    for k in range(3):
        _close(illu[k], d[f"stage{k}/illu"])
        _close(refl[k], d[f"stage{k}/r"])
        _close(inputs[k], d[f"stage{k}/input"])
        assert (att[k] >= 0).all()


def test_sci_finetune_equals_stage_zero_and_loads_a_whole_network_checkpoint():
    d = parity.load("sci")
    model = M.SCIFinetune(weights=parity.params(d)).eval()  # calibrate.* keys are ignored
    with torch.no_grad():
        i, r = model(d["input"])
    _close(i, d["stage0/illu"])
    _close(r, d["stage0/r"])
    _close(model.enhance_image(d["input"]), d["stage0/r"])


# ---------------------------------------------------------------------------- checkpoint layouts
def test_parameter_counts_and_keys_match_the_originals():
    assert sum(p.numel() for p in M.ZeroDCE().parameters()) == 79416
    assert sum(p.numel() for p in M.ZeroDCEPlusPlus().parameters()) == 10561
    sd = M.SCINetwork().state_dict()
    assert len(sd) == 83
    assert len({t.data_ptr() for t in sd.values()}) == 34


@pytest.mark.parametrize("name", ["zerodce", "zerodcepp", "sci"])
def test_fixture_keys_are_exactly_the_model_keys(name):
    d = parity.load(name)
    model = M.SCINetwork() if name == "sci" else M.build_model(name)
    assert set(parity.params(d)) == set(model.state_dict())


@pytest.mark.parametrize("drop", ["blocks", "shared"])
def test_sci_loads_either_alias_set(drop):
    d = parity.load("sci")
    full = parity.params(d)
    if drop == "blocks":  # keep enhance.conv.* / calibrate.convs.*
        sd = {k: v for k, v in full.items() if ".blocks." not in k}
    else:  # keep enhance.blocks.0.* / calibrate.blocks.{0,1,2}.*
        sd = {k: v for k, v in full.items() if not k.startswith(("enhance.conv.", "calibrate.convs."))}
    assert len(sd) < len(full)
    net = M.SCINetwork().eval()
    net.load_state_dict(sd)  # strict
    with torch.no_grad():
        illu = net(d["input"])[0]
    _close(illu[2], d["stage2/illu"])
    # the saver writes both alias sets, as the original does
    assert set(net.state_dict()) == set(full)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_save_and_load_weights_round_trip(tmp_path, suffix):
    src = M.SCINetwork()
    path = tmp_path / f"w{suffix}"
    M.save_weights(src, path)
    dst = M.load_weights(M.SCINetwork(), path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_load_weights_unwraps_training_checkpoints_and_dataparallel(tmp_path):
    d = parity.load("zerodce")
    wrapped = {"state_dict": {f"module.{k}": v for k, v in parity.params(d).items()}, "epoch": 3}
    path = tmp_path / "Epoch99.pth"
    torch.save(wrapped, path)
    model = M.load_weights(M.ZeroDCE(), path)
    _close(model.e_conv7.bias, d["param/e_conv7.bias"])


def test_wrong_architecture_says_what_the_weights_are(tmp_path):
    d = parity.load("zerodcepp")
    with pytest.raises(ValueError, match="look like zerodcepp weights"):
        M.load_weights(M.ZeroDCE(), parity.params(d))


def test_corrupt_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="broken.pth: cannot read weights"):
        M.load_weights(M.ZeroDCE(), path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        M.load_weights(M.ZeroDCE(), tmp_path / "missing.pth")


# ---------------------------------------------------------------------------- subnormal weights
@pytest.mark.parametrize("name", ["zerodce", "zerodcepp", "sci"])
def test_subnormal_weights_are_flushed_on_load_with_the_same_output(name, tmp_path):
    torch.manual_seed(1)
    model = M.build_model(name).eval()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    tiny = torch.finfo(torch.float32).tiny
    planted = 0
    for k, v in sd.items():
        if v.is_floating_point() and v.dim() == 4:  # conv weights: plant subnormals in a tenth of them
            mask = torch.rand_like(v) < 0.1
            v[mask] = torch.where(torch.rand_like(v[mask]) < 0.5, -1.0, 1.0) * tiny * torch.rand_like(v[mask]).clamp_min(1e-3)
            planted += int(mask.sum())
    assert planted > 10
    assert any(((v.abs() < tiny) & (v != 0)).any() for v in sd.values() if v.is_floating_point())
    path = tmp_path / "sub.pth"
    torch.save(sd, path)
    loaded = M.load_weights(M.build_model(name), path).eval()
    for v in loaded.state_dict().values():
        if v.is_floating_point():
            assert not ((v.abs() < tiny) & (v != 0)).any()
    # the same output as the unflushed weights
    raw = M.build_model(name).eval()
    for k, v in raw.state_dict().items():
        v.copy_(sd[k])
    x = torch.rand(1, 3, 24, 36)
    _close(loaded.enhance_image(x), raw.enhance_image(x), tol=1e-6)


def test_flush_subnormal_counts_and_keeps_normals():
    m = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        m.weight.fill_(1e-40)
        m.bias.fill_(0.5)
    assert M.flush_subnormal_(m) == 1
    assert m.weight.item() == 0.0 and m.bias.item() == 0.5


# ---------------------------------------------------------------------------- Zero-DCE++ any size
@pytest.mark.parametrize("h,w", [(50, 77), (13, 13), (72, 96)])
def test_zerodcepp_accepts_any_size_and_matches_on_multiples(h, w):
    model = M.ZeroDCEPlusPlus(scale_factor=12).eval()
    x = torch.rand(2, 3, h, w)
    enhanced, x_r = model(x)
    assert enhanced.shape == x.shape and x_r.shape == x.shape
    assert torch.isfinite(enhanced).all()
    # the padded region never leaks: the top-left part equals enhancing the padded image directly
    hp, wp = math.ceil(h / 12) * 12, math.ceil(w / 12) * 12
    padded = torch.nn.functional.pad(x, (0, wp - w, 0, hp - h), mode="replicate")
    _close(model(padded)[0][..., :h, :w], enhanced)


def test_zerodcepp_rejects_bad_scale_factor():
    with pytest.raises(ValueError, match="scale_factor: expected a positive integer"):
        M.ZeroDCEPlusPlus(scale_factor=0)
    with pytest.raises(ValueError, match="scale_factor"):
        M.ZeroDCEPlusPlus(scale_factor=2.5)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["zerodce", "zerodcepp", "sci"])
@pytest.mark.parametrize(
    "make,exc,msg",
    [
        (lambda: torch.rand(3, 16, 16), ValueError, "expected a 4-D tensor"),
        (lambda: torch.rand(1, 4, 16, 16), ValueError, "expected 3 channels"),
        (lambda: torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8), TypeError, "expected dtype"),
        (lambda: torch.rand(1, 3, 16, 16) * 255, ValueError, r"expected values in \[0, 1\]"),
        (lambda: torch.rand(0, 3, 16, 16), ValueError, "empty tensor"),
        (lambda: torch.rand(1, 3, 16, 16, dtype=torch.float64), TypeError, "model's weights are torch.float32"),
        (lambda: [[0.5]], TypeError, "expected a torch.Tensor"),
    ],
)
def test_models_reject_bad_input(name, make, exc, msg):
    model = M.build_model(name)
    with pytest.raises(exc, match=msg):
        model(make())


def test_model_on_other_device_is_named():
    model = M.ZeroDCE().to("meta")
    with pytest.raises(ValueError, match="weights are on meta"):
        model(torch.rand(1, 3, 8, 8))


def test_build_model_rejects_unknown_name():
    with pytest.raises(ValueError, match="expected one of zerodce, zerodcepp, sci"):
        M.build_model("retinex")


# ---------------------------------------------------------------------------- training losses and gradients
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_sci_network_loss_and_gradients_match_the_original(backend):
    import lowlight_fast

    d = parity.load("sci")
    expected = parity.expected()["sci"]
    net = M.SCINetwork()
    net.load_state_dict(parity.params(d))
    with lowlight_fast.use_backend(backend):
        net.eval()
        loss = net._loss(d["input"])
        loss.backward()
        assert loss.item() == pytest.approx(expected["network_loss_eval"], rel=1e-5)
        grads = dict(net.named_parameters())
        for key, want in d.items():
            if key.startswith("eval_grad_param/"):
                _close(grads[key[len("eval_grad_param/"):]].grad, want, tol=1e-4)
        net.train()
        assert net._loss(d["input"]).item() == pytest.approx(expected["network_loss_train"], rel=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_zerodce_training_loss_and_gradients_match_the_original(fused):
    from lowlight_fast.losses import ZeroDCELoss

    d = parity.load("zerodce")
    expected = parity.expected()["zerodce"]
    model = M.ZeroDCE(fused=fused)
    model.load_state_dict(parity.params(d))
    x = d["input"].clone().requires_grad_(True)
    _, enhanced, r = model(x)
    total, terms = ZeroDCELoss(fused=fused)(x, enhanced, r, return_terms=True)
    for key in ("tv", "spa", "col", "exp"):
        assert terms[key].item() == pytest.approx(expected[key], rel=1e-5, abs=1e-9), key
    assert total.item() == pytest.approx(expected["total"], rel=1e-5)
    total.backward()
    for name, p in model.named_parameters():
        _close(p.grad, d[f"grad_param/{name}"], tol=1e-4)
    _close(x.grad, d["grad_total_wrt_input"], tol=1e-4)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("scale", [1, 4, 12])
def test_zerodcepp_training_loss_matches_the_original(scale, fused):
    from lowlight_fast.losses import ZeroDCEPPLoss

    d = parity.load("zerodcepp")
    expected = parity.expected()["zerodcepp"][f"sf{scale}"]
    model = M.ZeroDCEPlusPlus(scale_factor=scale, fused=fused)
    model.load_state_dict(parity.params(d))
    enhanced, x_r = model(d["input"])
    total, terms = ZeroDCEPPLoss(fused=fused)(d["input"], enhanced, x_r, return_terms=True)
    for key in ("tv", "spa", "col", "exp"):
        assert terms[key].item() == pytest.approx(expected[key], rel=1e-5, abs=1e-9), key
    assert total.item() == pytest.approx(expected["total"], rel=1e-5)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("s", [2, 3, 4, 5, 12])
@pytest.mark.parametrize("h,w", [(25, 37), (24, 37), (25, 36), (1, 13)])
def test_zerodcepp_downscale_without_padding_equals_the_padded_original(s, h, w):
    """The gathered downscale is the original's interpolation of the padded image, to one rounding
    (aten's own order of the four-sample sum depends on the size)."""
    model = M.ZeroDCEPlusPlus(scale_factor=s)
    x = torch.rand(2, 3, h, w)
    padded = torch.nn.functional.pad(x, (0, (-w) % s, 0, (-h) % s), mode="replicate")
    want = torch.nn.functional.interpolate(padded, scale_factor=1 / s, mode="bilinear")
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        got = model._downscale_padded(inp)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1.2e-7)  # one float32 ulp below 1


@pytest.mark.parametrize("s", [2, 3, 12])
@pytest.mark.parametrize("h,w", [(37, 53), (36, 53), (13, 24)])
def test_zerodcepp_enhance_image_without_padding_equals_forward(s, h, w):
    torch.manual_seed(5)
    model = M.ZeroDCEPlusPlus(scale_factor=s).eval()
    x = torch.rand(2, 3, h, w) * 0.5
    with torch.no_grad():
        want = model(x)[0]
    got = model.enhance_image(x)
    assert got.shape == x.shape and got.is_contiguous()
    _close(got, want)
    unfused = M.ZeroDCEPlusPlus(scale_factor=s, fused=False).eval()
    unfused.load_state_dict(model.state_dict())
    _close(unfused.enhance_image(x), want)


# ---------------------------------------------------------------------------- inference path
@pytest.mark.parametrize(
    "make,pick",
    [
        (lambda: M.ZeroDCE(), lambda out: out[1]),
        (lambda: M.ZeroDCE(fused=False), lambda out: out[1]),
        (lambda: M.ZeroDCEPlusPlus(scale_factor=1), lambda out: out[0]),
        (lambda: M.ZeroDCEPlusPlus(scale_factor=4), lambda out: out[0]),
        (lambda: M.SCIFinetune(), lambda out: out[1]),
        (lambda: M.SCINetwork(stage=2), lambda out: out[1][0]),
    ],
    ids=["zerodce", "zerodce-reference", "zerodcepp-s1", "zerodcepp-s4", "sci-finetune", "sci-network"],
)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_enhance_image_equals_forward_in_any_layout(make, pick, layout):
    """enhance_image runs the convolutions channels-last on the CPU: same values as forward, for inputs
    of any layout, and a contiguous result for the models whose output is the whole image."""
    torch.manual_seed(3)
    model = make().eval()
    x = torch.rand(2, 3, 37, 53) * 0.4
    with torch.no_grad():
        want = pick(model(x))
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.rand(2, 3, 37, 106)[..., ::2] * 0.4
        with torch.no_grad():
            want = pick(model(x.contiguous()))
    got = model.enhance_image(x)
    _close(got, want)
    assert not got.requires_grad
    if layout != "channels_last" and not isinstance(model, M.ZeroDCEPlusPlus):  # ++ crops: a view
        assert got.is_contiguous()


# ---------------------------------------------------------------------------- non-finite values
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_weights_with_non_finite_values_are_refused_on_load(tmp_path, bad):
    sd = M.ZeroDCE().state_dict()
    sd["e_conv3.weight"][0, 0, 0, 0] = bad
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"w{suffix}"
        if suffix == ".pth":
            torch.save(sd, path)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        with pytest.raises(ValueError, match=r"e_conv3\.weight holds 1 non-finite"):
            M.load_weights(M.ZeroDCE(), path)
    with pytest.raises(ValueError, match="non-finite"):
        M.load_weights(M.ZeroDCE(), sd)


def test_save_weights_refuses_non_finite_values_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "zerodce.safetensors"
    good = M.ZeroDCE()
    M.save_weights(good, path)
    before = path.read_bytes()
    bad = M.ZeroDCE()
    with torch.no_grad():
        bad.e_conv7.bias[0] = float("nan")
    with pytest.raises(ValueError, match=r"not written.*e_conv7\.bias holds 1 non-finite"):
        M.save_weights(bad, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zerodce.safetensors"]  # no temporary left


def test_save_weights_leaves_no_temporary_file_when_writing_fails(tmp_path, monkeypatch):
    import safetensors.torch

    def full_disk(*args, **kwargs):
        open(args[1], "wb").write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        M.save_weights(M.ZeroDCE(), tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["zerodce", "zerodcepp", "sci"])
def test_nan_input_is_refused_by_the_range_check(name):
    x = torch.rand(1, 3, 16, 16)
    x[0, 1, 3, 4] = float("nan")
    model = M.build_model(name)
    with pytest.raises(ValueError, match="contains NaN"):
        model(x)
    with pytest.raises(ValueError, match="contains NaN"):
        model.enhance_image(x)


@pytest.mark.parametrize("name", ["zerodce", "zerodcepp", "sci"])
def test_enhance_image_on_a_3d_tensor_names_the_rank(name):
    with pytest.raises(ValueError, match="expected a 4-D tensor"):
        M.build_model(name).enhance_image(torch.rand(3, 16, 16))


def test_check_range_off_skips_only_the_range_check():
    model = M.ZeroDCE()
    model.check_range = False
    model(torch.rand(1, 3, 16, 16) * 2)  # out of range: accepted
    with pytest.raises(ValueError, match="expected 3 channels"):
        model(torch.rand(1, 4, 16, 16))
