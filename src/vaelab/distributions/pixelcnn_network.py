"""The PixelCNN's network as one pass computes it (pixelcnn.py has the likelihood, the sampler and the code prior).

The parameters are those of the layers as pixelcnn.py describes them, so run directories of any version load.
Feature maps are channels-last (..., H, W, C), the layout oneDNN's convolutions run fastest in on the CPU. Per call,
each layer's weights are rearranged once (`GatedLayer.kernels`) into convolutions whose outputs need no shifting:
  - the gate tanh(a) sigmoid(b) is sigmoid(b) (1 - 2 sigmoid(-2a)): one sigmoid over all 2C channels, with the tanh
    half's weights times -2 (exact), and one fused product (tanh costs several times sigmoid on the CPU); its
    backward is one product with derivatives the forward wrote over its own buffer (`_Gate`);
  - the conditioning's 1 x 1 convolutions (one channel) enter inside the gate, as one multiply-add;
  - the first layer, whose input has one channel, is two products of each pixel's window of the image (`taps`),
    its vertical-to-horizontal 1 x 1 convolution folded into the window's weights (cheaper than 2C x 2C per pixel);
    the last layer's vertical stack, which only that convolution reads, is folded into it too;
  - the middle layers' vertical-to-horizontal convolution, one row down, is one batched product (`rows_below`);
  - padding is one copy per convolution input (`padded`), whose backward hands out views: no autograd clones;
    nothing is masked: the kernels are shaped (and, where folded, zero) so that no later pixel is read.
The image's part of the first layer is computed at the image's leading shape and the conditioning's at the map's,
so k importance samples of one image (k maps, one image) share the image's products.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conditioned(pre: torch.Tensor, c: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """pre + the 1 x 1 convolution w (O, channels) of c (..., channels), broadcast over leading shapes (an image's
    pre-activation (1, B, ...) under k maps (k, B, ...): the product at the maps' shape, then pre added)."""
    if w.shape[1] == 1 and pre.shape[:-1] == torch.broadcast_shapes(pre.shape[:-1], c.shape[:-1]):
        return torch.addcmul(pre, c, w[:, 0])
    return (c @ w.t()).add_(pre)


class _Gate(torch.autograd.Function):
    """tanh(a) sigmoid(b) of pre + w c = [-2a, b] (..., 2C): sigmoid(b) (1 - 2 sigmoid(-2a)). The forward writes the
    two derivatives over the sigmoid's buffer, so the backward is one product."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, c: torch.Tensor | None, w: torch.Tensor | None) -> torch.Tensor:
        c, w = (None if t is None else t.to(pre.dtype) for t in (c, w))  # under bf16 autocast, the pre-activation's
        together = c is None or (c.shape[:-1] == pre.shape[:-1] and w.shape[1] == 1)
        s = torch.empty_like(pre, memory_format=torch.contiguous_format) if together else _conditioned(pre, c, w)
        half = s.shape[-1] // 2
        out = s.new_empty(*s.shape[:-1], half)
        maps = [pre.contiguous(), *([] if c is None else [c.contiguous()])] if together else []
        for block, o, *inputs in _blocks(s, out, *maps):  # each block's passes in cache
            if not together:
                block.sigmoid_()
            elif c is None:
                torch.sigmoid(inputs[0], out=block)
            else:
                torch.addcmul(inputs[0], inputs[1], w[:, 0], out=block).sigmoid_()
            sa, sb = block[:, :half], block[:, half:]
            torch.addcmul(sb, sa, sb, value=-2, out=o)
            u = o - sb
            torch.addcmul(u, u, sa, value=-1, out=sa)  # d/d(-2a) = -2 sb sa (1 - sa) = (out - sb)(1 - sa)
            torch.addcmul(o, o, sb, value=-1, out=sb)  # d/db = (1 - 2 sa) sb (1 - sb) = out (1 - sb)
        ctx.save_for_backward(s, c, w)
        ctx.pre_shape = pre.shape
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        d, c, w = ctx.saved_tensors
        half = grad.shape[-1]
        grad_pre = torch.empty_like(d)
        need_c, need_w = ctx.needs_input_grad[1:]
        full_c = None if c is None else c.expand(*d.shape[:-1], c.shape[-1]).contiguous()
        grad_c = torch.empty_like(full_c) if need_c else None
        grad_w = w.new_zeros(w.shape[1], w.shape[0]) if need_w else None
        for g_pre, db, g, *extra in _blocks(grad_pre, d, grad.contiguous(), *([full_c] if need_c or need_w else []),
                                            *([grad_c] if need_c else [])):
            torch.mul(db.view(-1, 2, half), g.unsqueeze(1), out=g_pre.view(-1, 2, half))  # the gradient, then its products
            if need_c:
                torch.mm(g_pre, w, out=extra[1])
            if need_w:
                grad_w.addmm_(extra[0].t(), g_pre)  # this way round: MKL is slow at g^T c
        return (grad_pre.sum_to_size(ctx.pre_shape), None if grad_c is None else grad_c.sum_to_size(c.shape),
                None if grad_w is None else grad_w.t())


BLOCK_ROWS = 2048
"""Rows (pixels) of a gate's elementwise passes done together: 2048 x 2C floats stay in a core's cache between them."""


def _blocks(*tensors: torch.Tensor):
    """The tensors (..., C_i), all of one leading shape, as matching (rows, C_i) blocks of BLOCK_ROWS rows."""
    flat = [t.view(-1, t.shape[-1]) for t in tensors]
    for start in range(0, flat[0].shape[0], BLOCK_ROWS):
        yield tuple(t[start : start + BLOCK_ROWS] for t in flat)


def gate(pre: torch.Tensor, c: torch.Tensor | None = None, w: torch.Tensor | None = None) -> torch.Tensor:
    """The gate of pre + w c = [-2a, b] (c: the conditioning map (..., channels) or None); in place (pre is
    overwritten, the result a view of it) where no gradient is recorded."""
    if torch.compiler.is_compiling():  # plain operations, which the compiler fuses
        s = torch.sigmoid(pre if c is None else _conditioned(pre, c, w))
        sa, sb = s.chunk(2, -1)
        return sb - 2 * sa * sb
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (pre, c, w)):
        with torch.autocast(pre.device.type, enabled=False):
            return _Gate.apply(pre, c, w)
    together = c is None or (c.shape[:-1] == pre.shape[:-1] and w.shape[1] == 1)
    pre = pre.contiguous() if together else _conditioned(pre, c, w)
    half = pre.shape[-1] // 2
    for block, *cond in _blocks(pre, *([c.contiguous()] if together and c is not None else [])):
        if cond:
            block.addcmul_(cond[0], w[:, 0])
        sa, sb = block.sigmoid_()[:, :half], block[:, half:]
        torch.addcmul(sb, sa, sb, value=-2, out=sa)
    return pre[..., :half]


class _Padded(torch.autograd.Function):
    """padded's copy; the backward hands each part its slice of the gradient (a view; zero-padded where rows were left
    out) instead of the clones that copying into views of a tensor costs autograd."""

    @staticmethod
    def forward(ctx, layout, *tensors: torch.Tensor) -> torch.Tensor:
        (top, left, right, bottom), parts = layout
        h, w = tensors[0].shape[-3:-1]
        lead = torch.broadcast_shapes(*(t.shape[:-3] for t in tensors))
        out = tensors[0].new_zeros(*lead, h + top + bottom, w + left + right, sum(n for _, n in parts))
        rows, start, slices = h + min(bottom, 0), 0, []
        for value, n in parts:
            target = out[..., top : top + rows, left : left + w, start : start + n]
            if isinstance(value, int):
                target.copy_(tensors[value][..., :rows, :, :])
                slices.append((start, start + n))
            else:
                target.fill_(value)
            start += n
        ctx.window, ctx.slices, ctx.shapes = (top, rows, left, w), slices, [t.shape for t in tensors]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (top, rows, left, w), grads = ctx.window, []
        for (c0, c1), shape in zip(ctx.slices, ctx.shapes):
            g = grad[..., top : top + rows, left : left + w, c0:c1]
            if rows < shape[-3]:  # rows cropped at the bottom: zero gradient
                g = F.pad(g, (0, 0, 0, 0, 0, shape[-3] - rows))
            grads.append(g.sum_to_size(shape) if g.shape != shape else g)
        return (None, *grads)


def padded(parts: list, top: int, left: int, right: int, bottom: int = 0) -> torch.Tensor:
    """The channels-last maps `parts` (..., H, W, C_i) (a float: a channel of that constant) side by side as channels,
    with zero rows above (`top`) and below (`bottom`; negative: rows of the maps left out at the bottom) and zero
    columns left and right; leading shapes broadcast. One copy."""
    if torch.compiler.is_compiling():  # plain operations, which the compiler fuses
        like = next(p for p in parts if isinstance(p, torch.Tensor))
        lead = torch.broadcast_shapes(*(p.shape[:-3] for p in parts if isinstance(p, torch.Tensor)))
        full = [p.expand(*lead, *p.shape[-3:]) if isinstance(p, torch.Tensor) else like.new_full((*lead, *like.shape[-3:-1], 1), p)
                for p in parts]
        joined = torch.cat(full, -1)[..., : like.shape[-3] + min(bottom, 0), :, :]
        return F.pad(joined, (0, 0, left, right, top, max(bottom, 0)))
    tensors, layout = [], []
    for part in parts:
        if isinstance(part, torch.Tensor):
            tensors.append(part)
            layout.append((len(tensors) - 1, part.shape[-1]))
        else:
            layout.append((float(part), 1))
    return _Padded.apply(((top, left, right, bottom), layout), *tensors)


class _RowsBelow(torch.autograd.Function):
    """out = h, plus in rows 1.. the vertical stack's contribution: v @ weight^T one row down (v: a pre-activation, weight
    a 1 x 1 convolution; one batched product) or, without weight, v's own rows 1..; plus `first_row` (O,) in row 0.
    For h (..., H, W, O), v (..., H, W, I); a new tensor (in place on h, a view, autograd would clone the gradient)."""

    @staticmethod
    def forward(ctx, h, v, weight, first_row):
        v, weight, first_row = (None if t is None else t.to(h.dtype) for t in (v, weight, first_row))  # bf16 autocast
        hs, vs, n, o = *_rows(h, v), h.shape[-1]
        out = torch.empty_like(hs)
        torch.add(hs[:, 0], 0 if first_row is None else first_row, out=out[:, 0])
        if weight is None:
            torch.add(hs[:, 1:], vs[:, 1:], out=out[:, 1:])
        else:
            torch.baddbmm(hs[:, 1:].reshape(n, -1, o), vs[:, :-1].reshape(n, -1, vs.shape[-1]), weight.t().expand(n, -1, -1),
                          out=out[:, 1:].view(n, -1, o))
        ctx.save_for_backward(v if weight is not None else None, weight)
        ctx.shape, ctx.first_row = v.shape, first_row is not None
        return out.view(h.shape)

    @staticmethod
    def backward(ctx, grad):
        v, weight = ctx.saved_tensors
        gs = grad.reshape(-1, *grad.shape[-3:])
        n, o = gs.shape[0], grad.shape[-1]
        grad_v = grad.new_empty(n, *ctx.shape[-3:])
        grad_w = None
        if weight is None:
            grad_v[:, 0] = 0
            grad_v[:, 1:] = gs[:, 1:]
        else:
            vs, g = v.reshape(n, *v.shape[-3:]), gs[:, 1:].reshape(n, -1, o)
            grad_v[:, -1] = 0
            torch.bmm(g, weight.expand(n, -1, -1), out=grad_v[:, :-1].view(n, -1, vs.shape[-1]))
            grad_w = torch.bmm(g.transpose(1, 2), vs[:, :-1].reshape(n, -1, vs.shape[-1])).sum(0)
        grad_first = gs[:, 0].sum((0, 1)) if ctx.first_row else None
        return grad, grad_v.view(ctx.shape), grad_w, grad_first


def _rows(h: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    hs = h.reshape(-1, *h.shape[-3:])
    return hs, v.reshape(-1, *v.shape[-3:]), hs.shape[0]


def rows_below(h: torch.Tensor, v: torch.Tensor, weight: torch.Tensor | None = None,
               first_row: torch.Tensor | None = None) -> torch.Tensor:
    """_RowsBelow; in place on h where no gradient is recorded."""
    if torch.compiler.is_compiling():  # plain operations, which the compiler fuses
        below = v[..., 1:, :, :] if weight is None else v[..., :-1, :, :] @ weight.t()
        first = h[..., :1, :, :] if first_row is None else h[..., :1, :, :] + first_row
        return torch.cat([first, h[..., 1:, :, :] + below], -3)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, v, weight, first_row)):
        with torch.autocast(h.device.type, enabled=False):
            return _RowsBelow.apply(h, v, weight, first_row)
    v, weight = v.to(h.dtype), None if weight is None else weight.to(h.dtype)
    hs, vs, n = _rows(h, v)
    if first_row is not None:
        hs[:, 0] += first_row
    if weight is None:
        hs[:, 1:] += vs[:, 1:]
    else:
        hs[:, 1:].view(n, -1, h.shape[-1]).baddbmm_(vs[:, :-1].reshape(n, -1, vs.shape[-1]), weight.t().expand(n, -1, -1))
    return h


def taps(x: torch.Tensor, kernel: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The kernel-sized window at each of `size` output positions of the channels-last map x (..., H', W', C), as
    channels (..., H, W, kh * kw * C) ordered (row, column, channel): a convolution's input as one product reads it."""
    (kh, kw), (h, w) = kernel, size
    return torch.cat([x[..., i : i + h, j : j + w, :] for i in range(kh) for j in range(kw)], -1)


def flat(weight: torch.Tensor) -> torch.Tensor:
    """A kernel (O, C, kh, kw) as the (O, kh * kw * C) matrix that multiplies `taps`."""
    return weight.permute(0, 2, 3, 1).flatten(1)


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A convolution (no padding) of the channels-last map x (..., H', W', C) with weight (O, C, kh, kw): (..., H, W, O)."""
    *lead, h, w, c = x.shape
    y = F.conv2d(x.reshape(-1, h, w, c).permute(0, 3, 1, 2), weight.contiguous(memory_format=torch.channels_last), bias)
    y = y.permute(0, 2, 3, 1)
    return y.contiguous().view(*lead, *y.shape[1:])


class GatedLayer(nn.Module):
    """One gated layer; conditioning = 0: unconditioned (no 1 x 1 convolutions of a map)."""

    def __init__(self, in_channels: int, channels: int, kernel: int, conditioning: int, first: bool):
        super().__init__()
        half = kernel // 2
        self.half, self.first, self.channels = half, first, channels
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (half + 1, kernel))
        self.horizontal = nn.Conv2d(in_channels, 2 * channels, (1, half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.conditioned = conditioning > 0
        if self.conditioned:
            self.condition_vertical = nn.Conv2d(conditioning, 2 * channels, 1)
            self.condition_horizontal = nn.Conv2d(conditioning, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def kernels(self, last: bool) -> dict[str, torch.Tensor]:
        """The layer's weights as one pass uses them, the tanh half of each pre-activation times -2 (exact):
          "v", "bv": the vertical convolution over the stack's (gated) input, its bias with the conditioning's;
          "h", "bh": the horizontal convolution, its bias with the conditioning's and the vertical-to-horizontal one;
          "wcv", "wch": the conditioning's 1 x 1 weights (2C, channels), added inside the gates;
          "vh": the vertical-to-horizontal weights, which read the vertical pre-activation before the conditioning
            (a middle layer's "bh" leaves out what "vh" adds for the conditioning's bias, and "first_row", where vh
            adds nothing, puts it back).
        The first layer's "h" is over [x, 1] padded k + 1 above and left, k right, window (k + 2) x (2k + 2): the
        image's row shifted right, and the row above's vertical pre-activation through "vh" (its bias through the
        channel of ones, zero above the image). The last layer has "u", "bu" instead of "v", "bv": its vertical stack
        folded into "vh" (nothing else reads it), read one row up (pad k + 1 above, the last row left out), its
        output added in rows 1.. only."""
        c2, k = 2 * self.channels, self.half
        s = torch.ones(c2, dtype=self.vertical.weight.dtype, device=self.vertical.weight.device)
        s[: self.channels] = -2
        vh = self.vertical_to_horizontal.weight.view(c2, c2) * s[:, None] / s[None, :]
        v, h = self.vertical.weight * s[:, None, None, None], self.horizontal.weight * s[:, None, None, None]
        bv, bh = self.vertical.bias * s, (self.horizontal.bias + self.vertical_to_horizontal.bias) * s
        out = {"vh": vh, "bh": bh, "bv": bv, "v": v}
        if self.conditioned:
            out["wcv"] = self.condition_vertical.weight.flatten(1) * s[:, None]
            out["wch"] = self.condition_horizontal.weight.flatten(1) * s[:, None]
            out["bv"] = bv + self.condition_vertical.bias * s
            out["bh"] = bh + self.condition_horizontal.bias * s
        fold = torch.einsum("oi,ichw->ochw", vh, v) if self.first or last else None  # the vertical stack through vh
        if self.first:
            window = v.new_zeros(c2, v.shape[1] + 1, k + 2, 2 * k + 2)
            window[:, :-1, k + 1, : k + 1] = h[:, :, 0]  # this row, columns c - 1 - k .. c - 1
            window[:, :-1, : k + 1, 1:] = fold  # rows r - 1 - k .. r - 1
            window[:, -1, k, k + 1] = vh @ bv  # the vertical bias through vh: rows 1.. only
            return {**out, "h": window}
        out["h"] = h
        if last:  # the vertical stack folded into vh, with its bias (rows 1.. only)
            del out["v"], out["bv"]
            return {**out, "u": fold, "bu": vh @ bv}
        if self.conditioned:  # the vertical convolution's bias has the conditioning's, which vh must not read
            out["first_row"] = vh @ (self.condition_vertical.bias * s)
            out["bh"] = out["bh"] - out["first_row"]
        return out


class PixelCNN(nn.Module):
    """Logits (N, out_channels, H, W) of the value at each position given the earlier ones in raster order, for
    inputs x (N, in_channels, H, W) and conditioning maps c (N, conditioning, H, W) (None when conditioning = 0).
    Binary images: in = out = 1 (the logit of x_i = 1); a grid of K codes: embedded inputs, out = K logits."""

    def __init__(self, layers: int = 3, channels: int = 32, kernel: int = 3, conditioning: int = 1, in_channels: int = 1,
                 out_channels: int = 1):
        super().__init__()
        self.layers = nn.ModuleList(GatedLayer(in_channels if i == 0 else channels, channels, kernel, conditioning, first=i == 0)
                                    for i in range(layers))
        self.head = nn.Sequential(nn.ELU(), nn.Conv2d(channels, channels, 1), nn.ELU(), nn.Conv2d(channels, out_channels, 1))
        self.channels, self.half = channels, kernel // 2

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        nhwc = self.channels_last(x.permute(0, 2, 3, 1), None if c is None else c.permute(0, 2, 3, 1))
        return nhwc.permute(0, 3, 1, 2)

    def kernels(self) -> list[dict[str, torch.Tensor]]:
        return [layer.kernels(i == len(self.layers) - 1) for i, layer in enumerate(self.layers)]

    def head_out(self, h: torch.Tensor) -> torch.Tensor:
        """The output head (ELU, 1 x 1, ELU, 1 x 1) on channels-last features (..., C)."""
        h = F.linear(F.elu(h), self.head[1].weight.flatten(1), self.head[1].bias)
        return F.linear(F.elu(h, inplace=not torch.is_grad_enabled()), self.head[3].weight.flatten(1), self.head[3].bias)

    def out(self, layer: int, pre: torch.Tensor, h: torch.Tensor | None, c: torch.Tensor | None, w: torch.Tensor | None) -> torch.Tensor:
        """The horizontal stack's output: h + 1 x 1 (gate(pre + w c)) (no residual in the first layer: h = None)."""
        out, g = self.layers[layer].out, gate(pre, c, w)
        # On the product's own (2-d) result, not a view of it: in place on a view, autograd would clone the gradient.
        y = torch.addmm(out.bias, g.reshape(-1, g.shape[-1]), out.weight.flatten(1).t())
        return (y if h is None else y.add_(h.reshape(y.shape))).view(*g.shape[:-1], -1)

    def channels_last(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (..., H, W, out) for channels-last inputs x (*X, H, W, in) and c (*Z, H, W, conditioning) whose leading
        shapes broadcast: the image's part of the first layer is computed at x's leading shape, the conditioning's at
        c's, so k importance samples of one image (c (k, B, ...), x (B, ...)) share the image's products."""
        k, kernels = self.half, self.kernels()
        x = x if c is None else x.to(c.dtype)
        size, first = x.shape[-3:-1], kernels[0]
        # The first layer: both stacks read windows of the image padded once (the vertical one's lies inside).
        window = taps(padded([x, 1.0], k + 1, k + 1, k), (k + 2, 2 * k + 2), size)
        h = F.linear(window, flat(first["h"]), first["bh"])
        if len(kernels) > 1:
            v = F.linear(window, flat(F.pad(first["v"], (1, 0, 1, 0, 0, 1))), first["bv"])
        h, wcv = self.out(0, h, None, c, first.get("wch")), first.get("wcv")
        for i, w in enumerate(kernels[1:], start=1):
            v = gate(v, c, wcv)
            hp = conv(padded([h], 0, k, 0), w["h"], w["bh"])
            if "u" in w:  # the last layer
                hp = rows_below(hp, conv(padded([v], k + 1, k, k, -1), w["u"], w["bu"]))
            else:
                v, wcv = conv(padded([v], k, k, k), w["v"], w["bv"]), w.get("wcv")
                hp = rows_below(hp, v, w["vh"], w.get("first_row"))
            h = self.out(i, hp, h, c, w.get("wch"))
        return self.head_out(h)
