"""The convolutional networks in the default (NCHW) and the channels-last (NHWC) memory layout, on the CPU.

Times a training step of the conv VAE's encoder and decoder (batch 100, Adam) and the decoder's
throughput at evaluation (2,000 codes per call), both layouts interleaved, medians of --repeats.
vaelab's nets/conv.py keeps its weights and feature maps channels-last; this is the measurement
behind that choice (docs/architecture.md).
Usage: python bench/conv_layout.py [--threads N] [--repeats R] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from vaelab.nets import ConvDecoder, ConvEncoder


def _nets(layout: torch.memory_format):
    torch.manual_seed(0)
    encoder, decoder = ConvEncoder((28, 28), 20, (32, 64)), ConvDecoder(10, (28, 28), (32, 64))
    for net in (encoder, decoder):
        net.to(memory_format=layout)
    return encoder, decoder


def _forward(encoder, decoder, layout, x):
    flat = x.view(-1, 1, 28, 28).contiguous(memory_format=layout)
    h = encoder.head(encoder.features(flat).flatten(1))
    start = decoder.project(h[:, :10]).view(-1, *decoder.start).contiguous(memory_format=layout)
    return h, decoder.deconv(start)


def step_ms(layout, steps: int = 20) -> float:
    encoder, decoder = _nets(layout)
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()])
    x = torch.rand(100, 784)
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        h, out = _forward(encoder, decoder, layout, x)
        loss = out.square().mean() + h.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps * 1000


@torch.inference_mode()
def decode_per_second(layout, calls: int = 5) -> float:
    _, decoder = _nets(layout)
    z = torch.randn(2000, 10)
    decoder.deconv(decoder.project(z).view(-1, *decoder.start).contiguous(memory_format=layout))
    start = time.perf_counter()
    for _ in range(calls):
        decoder.deconv(decoder.project(z).view(-1, *decoder.start).contiguous(memory_format=layout))
    return calls * z.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layouts = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
    runs = {name: {"step_ms": [], "decode_per_s": []} for name in layouts}
    for _ in range(args.repeats):
        for name, layout in layouts.items():
            runs[name]["step_ms"].append(step_ms(layout))
            runs[name]["decode_per_s"].append(decode_per_second(layout))
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats,
              **{name: {key: round(statistics.median(v), 2) for key, v in r.items()} for name, r in runs.items()}}
    result["step_speedup"] = round(result["nchw"]["step_ms"] / result["channels_last"]["step_ms"], 2)
    result["decode_speedup"] = round(result["channels_last"]["decode_per_s"] / result["nchw"]["decode_per_s"], 2)
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
