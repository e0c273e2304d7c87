"""The PixelCNN's fast paths against a frozen copy of the implementation they replaced (bench/pixelcnn_reference.py),
with the same weights: the one-pass density and its gradients, the k-sample path, inference mode, the code prior;
sampling with kept states gives the one-pass log-probability and the reference's samples; masks stay causal."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from conftest import REPO
from vaelab.distributions.pixelcnn import CodePrior, PixelCNN, PixelCNNDistribution, PixelCNNLikelihood

_spec = importlib.util.spec_from_file_location("pixelcnn_reference", REPO / "bench" / "pixelcnn_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

# (layers, channels, side): the pixelvae and vlae presets (3 and 2 layers of 32 channels on 28 x 28), a small 3-layer and
# a 12-layer stack, and one layer (first and last at once).
SHAPES = {"pixelvae": (3, 32, 28), "vlae": (2, 32, 28), "3-layer": (3, 8, 7), "12-layer": (12, 8, 7), "1-layer": (1, 8, 5)}


def _pair(layers: int, channels: int, dtype=torch.float64, seed: int = 0) -> tuple[PixelCNN, "reference.PixelCNN"]:
    """The new network and the reference one with the same (randomised, biases included) weights."""
    torch.manual_seed(seed)
    old = reference.PixelCNN(layers, channels, 3).to(dtype)
    with torch.no_grad():
        for p in old.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
    new = PixelCNN(layers, channels, 3).to(dtype)
    new.load_state_dict(old.state_dict())  # the parameter names are unchanged: old run directories load
    return new, old


def _inputs(n: int, side: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.bernoulli(torch.full((n, side * side), 0.4, dtype=dtype)), torch.randn(n, side * side, dtype=dtype)


@pytest.mark.parametrize("name", list(SHAPES))
def test_density_and_its_gradients_equal_the_reference(name):
    layers, channels, side = SHAPES[name]
    new, old = _pair(layers, channels)
    x, c = _inputs(2, side)
    c_new, c_old = c.clone().requires_grad_(), c.clone().requires_grad_()
    lp_new = PixelCNNDistribution(new, c_new, (side, side)).log_prob(x)
    lp_old = reference.PixelCNNDistribution(old, c_old, (side, side)).log_prob(x)
    torch.testing.assert_close(lp_new, lp_old, rtol=1e-10, atol=1e-9)
    (lp_new * torch.tensor([1.0, -0.5], dtype=x.dtype)).sum().backward()
    (lp_old * torch.tensor([1.0, -0.5], dtype=x.dtype)).sum().backward()
    torch.testing.assert_close(c_new.grad, c_old.grad, rtol=1e-9, atol=1e-9)
    old_grads = dict(old.named_parameters())
    for key, p in new.named_parameters():
        torch.testing.assert_close(p.grad, old_grads[key].grad, rtol=1e-9, atol=1e-9, msg=key)


def test_float32_density_within_float_tolerance_with_and_without_gradient():
    new, old = _pair(3, 32, torch.float32)
    x, c = _inputs(4, 28, torch.float32)
    expected = reference.PixelCNNDistribution(old, c, (28, 28)).log_prob(x)
    torch.testing.assert_close(PixelCNNDistribution(new, c, (28, 28)).log_prob(x), expected, rtol=1e-5, atol=2e-3)
    with torch.inference_mode():  # evaluation: in-place gates
        torch.testing.assert_close(PixelCNNDistribution(new, c, (28, 28)).log_prob(x), expected, rtol=1e-5, atol=2e-3)


def test_the_k_sample_path_equals_the_per_sample_path():
    """x (B, D) under k maps (k, B, D): the image's part computed once per image and broadcast equals each draw alone."""
    new, old = _pair(3, 8)
    k, b, side = 4, 3, 7
    x, _ = _inputs(b, side)
    c = torch.randn(k, b, side * side, dtype=x.dtype)
    together = PixelCNNDistribution(new, c, (side, side)).log_prob(x)
    assert together.shape == (k, b)
    alone = torch.stack([PixelCNNDistribution(new, c[i], (side, side)).log_prob(x) for i in range(k)])
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(together, reference.PixelCNNDistribution(old, c, (side, side)).log_prob(x), rtol=1e-10, atol=1e-9)
    # and the other way round: many images under one map (the figure of what a code leaves out)
    xs = torch.bernoulli(torch.full((5, b, side * side), 0.5, dtype=x.dtype))
    torch.testing.assert_close(PixelCNNDistribution(new, c[0], (side, side)).log_prob(xs),
                               reference.PixelCNNDistribution(old, c[0], (side, side)).log_prob(xs), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_sampling_gives_the_one_pass_log_probability_and_the_references_samples(layers):
    new, old = _pair(layers, 8)
    side = 7
    c = torch.randn(5, side * side, dtype=torch.float64)
    p = PixelCNNDistribution(new, c, (side, side))
    torch.manual_seed(3)
    x, probs = p._autoregress()
    sequential = (x * probs.log() + (1 - x) * (1 - probs).log()).sum(-1)
    torch.testing.assert_close(p.log_prob(x), sequential, rtol=1e-10, atol=1e-9)
    torch.manual_seed(3)  # the same draws: one Bernoulli draw per pixel over all images, as the reference
    x_old, probs_old = reference.PixelCNNDistribution(old, c, (side, side))._autoregress()
    assert torch.equal(x, x_old)
    torch.testing.assert_close(probs, probs_old, rtol=1e-10, atol=1e-12)
    assert set(x.unique().tolist()) <= {0.0, 1.0}


def test_sampling_with_a_sample_shape_and_the_mean_in_float32():
    likelihood = PixelCNNLikelihood((1, 6, 6), layers=2, channels=8)
    c = torch.randn(3, 36)
    p = likelihood(c)
    x = p.sample((2,))
    assert x.shape == (2, 3, 36) and likelihood.sampling_passes == 36
    torch.manual_seed(0)
    x, probs = p._autoregress((2,))
    sequential = (x * probs.log() + (1 - x) * (1 - probs).log()).sum(-1)
    torch.testing.assert_close(p.log_prob(x), sequential, rtol=1e-5, atol=1e-4)
    assert p.mean.shape == (3, 36) and ((p.mean > 0) & (p.mean < 1)).all()


@pytest.mark.parametrize("layers", [1, 3])
def test_masks_are_causal_by_gradient(layers):
    """The logit of pixel i has zero gradient with respect to the image at pixels >= i and the map at pixels > i, and a
    nonzero one with respect to the pixel to its left (the shifted image in the first layer) and the one above."""
    new, _ = _pair(layers, 8)
    side = 6
    x, c = _inputs(1, side)
    x.requires_grad_()
    c.requires_grad_()
    logits = new(x.view(1, 1, side, side), c.view(1, 1, side, side)).flatten()
    for i in range(side * side):
        gx, gc = torch.autograd.grad(logits[i], (x, c), retain_graph=True)
        assert gx[0, i:].abs().max() == 0, f"pixel {i} depends on the image at a pixel >= {i}"
        assert gc[0, i + 1 :].abs().max() == 0 if i + 1 < side * side else True, f"pixel {i} depends on a later map value"
        if i % side:
            assert gx[0, i - 1] != 0
        if i >= side:
            assert gx[0, i - side] != 0


def test_code_prior_equals_the_reference_and_samples_as_it():
    torch.manual_seed(0)
    old = reference.CodePrior(codes=5, grid=(4, 4), layers=3, channels=8).double()
    new = CodePrior(codes=5, grid=(4, 4), layers=3, channels=8).double()
    new.load_state_dict(old.state_dict())
    indices = torch.randint(5, (6, 16))
    torch.testing.assert_close(new.logits(indices), old.logits(indices), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(new.log_prob(indices), old.log_prob(indices), rtol=1e-10, atol=1e-10)
    torch.manual_seed(1)
    drawn = new.sample(7)
    torch.manual_seed(1)
    assert torch.equal(drawn, old.sample(7)) and drawn.dtype == torch.long


def test_bf16_autocast_trains_and_evaluates_near_the_float32_density():
    """--precision bf16: the fast paths keep their dtypes consistent under autocast (training and inference)."""
    new, old = _pair(3, 8, torch.float32)
    x, c = _inputs(4, 8, torch.float32)
    c.requires_grad_()
    expected = reference.PixelCNNDistribution(old, c, (8, 8)).log_prob(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = PixelCNNDistribution(new, c, (8, 8)).log_prob(x)
        lp.sum().backward()
        with torch.inference_mode():
            inference = PixelCNNDistribution(new, c.detach(), (8, 8)).log_prob(x)
    assert torch.isfinite(c.grad).all() and all(torch.isfinite(p.grad).all() for p in new.parameters() if p.grad is not None)
    for got in (lp.detach(), inference):
        torch.testing.assert_close(got, expected, rtol=0, atol=0.05 * expected.abs().max().item())


def test_the_plain_operations_torch_compile_traces_give_the_same_density(monkeypatch):
    """Under torch.compile the network runs plain operations (which the compiler fuses) instead of its own autograd
    functions and in-place blocks; run eagerly here, they give the reference's density and gradients too."""
    new, old = _pair(3, 8)
    x, c = _inputs(2, 7)
    c_new, c_old = c.clone().requires_grad_(), c.clone().requires_grad_()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    lp = PixelCNNDistribution(new, c_new, (7, 7)).log_prob(x)
    torch.testing.assert_close(lp, reference.PixelCNNDistribution(old, c_old, (7, 7)).log_prob(x), rtol=1e-10, atol=1e-9)
    lp.sum().backward()
    reference.PixelCNNDistribution(old, c_old, (7, 7)).log_prob(x).sum().backward()
    torch.testing.assert_close(c_new.grad, c_old.grad, rtol=1e-9, atol=1e-9)
