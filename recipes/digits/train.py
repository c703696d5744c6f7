"""Train the digits CNN and write weights.pt (the committed weights came from this script).

    python recipes/digits/train.py            # ~10 s on 2 CPU cores
"""

from pathlib import Path

import numpy as np
import torch

import digits_data
from digits_model import build


def main(epochs: int = 30, seed: int = 0) -> None:
    torch.manual_seed(seed)
    (x, y), (vx, vy) = digits_data.training(), digits_data.validation()
    x, y = torch.from_numpy(x["input"]), torch.from_numpy(y)
    model = build()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(vx["input"])).argmax(1).numpy() == vy).mean()
    print(f"validation top-1: {acc:.4f}")
    out = Path(__file__).with_name("weights.pt")
    torch.save(model.state_dict(), out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
