"""Time one SwAV training step in PyTorch with the same network, crops and batch as bench/train.ts.

Prints one JSON line: {"framework", "threads", "batch", "steps", "seconds_per_step", "images_per_second"}.
The network mirrors src/train/model.ts. It has a 3x3 stem and one basic residual block per
stage, with width, 2 x width and 4 x width channels and stride 2 from the second stage. Global
average pooling feeds a linear-BN-ReLU-linear head with L2 normalisation and bias-free
prototypes that are normalised before every step. The step uses Sinkhorn-Knopp targets, the
swapped-prediction loss, and SGD with momentum and LARS scaling.
"""

import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin, cout, size, stride):
    return nn.Sequential(nn.Conv2d(cin, cout, size, stride, size // 2, bias=False), nn.BatchNorm2d(cout))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, 1)
        self.shortcut = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class Swav(nn.Module):
    def __init__(self, width, depths, hidden, dim, prototypes):
        super().__init__()
        layers = [conv_bn(3, width, 3, 1), nn.ReLU()]
        channels = width
        for stage, depth in enumerate(depths):
            out = width * 2**stage
            for b in range(depth):
                layers.append(Block(channels, out, 2 if stage > 0 and b == 0 else 1))
                channels = out
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.prototypes = nn.Linear(dim, prototypes, bias=False)

    def forward(self, crops):
        features = []
        start = 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
                end += 1
            features.append(self.backbone(torch.cat(crops[start:end])).mean(dim=(2, 3)))
            start = end
        z = F.normalize(self.head(torch.cat(features)), dim=1)
        return self.prototypes(z)


@torch.no_grad()
def sinkhorn(scores, epsilon, iterations):
    q = torch.exp((scores - scores.max()) / epsilon).t()
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def lars_sgd_step(model, lr, momentum, weight_decay, trust, buffers):
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is None:
                continue
            g = p.grad + weight_decay * p
            wn, gn = p.norm(), p.grad.norm()
            if wn > 0 and gn > 0:
                g = g * (trust * wn / (gn + weight_decay * wn))
            buf = buffers.setdefault(p, torch.zeros_like(p))
            buf.mul_(momentum).add_(g)
            p.sub_(lr * buf)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sizes", default="32,32,16,16,16,16")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--depths", default="1,1,1")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--prototypes", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Swav(args.width, [int(d) for d in args.depths.split(",")], args.hidden, args.dim, args.prototypes)
    sizes = [int(s) for s in args.sizes.split(",")]
    crops = [torch.randn(args.batch, 3, s, s) for s in sizes]
    buffers = {}

    def step():
        with torch.no_grad():
            model.prototypes.weight.copy_(F.normalize(model.prototypes.weight, dim=1))
        scores = model(crops)
        per_crop = scores.split(args.batch)
        loss = 0.0
        for a in (0, 1):
            q = sinkhorn(per_crop[a].detach(), 0.05, 3)
            sub = 0.0
            for c, s in enumerate(per_crop):
                if c != a:
                    sub -= torch.mean(torch.sum(q * F.log_softmax(s / 0.1, dim=1), dim=1))
            loss += sub / (len(per_crop) - 1)
        loss /= 2
        model.zero_grad()
        loss.backward()
        lars_sgd_step(model, 0.6, 0.9, 1e-6, 0.001, buffers)
        return float(loss)

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    elapsed = (time.perf_counter() - start) / args.steps
    assert math.isfinite(loss)
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}",
        "threads": args.threads,
        "batch": args.batch,
        "steps": args.steps,
        "seconds_per_step": elapsed,
        "images_per_second": args.batch / elapsed,
    }))


if __name__ == "__main__":
    main()
