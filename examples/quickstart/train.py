"""A tiny training script that knows nothing about where it runs.

Fits y = 3x + 1 by gradient descent, logs the loss as a metric, and saves the
model to $MLTRAIN_OUTPUT_DIR (kept with the run). Standard library only.
"""

import argparse
import json
import os
import random

try:
    from mltrain import log_metric
except ImportError:  # no mltrain on the target: the stdout line protocol needs nothing

    def log_metric(name, value, step=None):
        print(f"::metric {name}={value}" + (f" step={step}" if step is not None else ""), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    data = [(x, 3 * x + 1 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(200))]
    w, b = 0.0, 0.0
    for epoch in range(args.epochs):
        for x, y in data:
            err = w * x + b - y
            w -= args.lr * err * x
            b -= args.lr * err
        loss = sum((w * x + b - y) ** 2 for x, y in data) / len(data)
        print(f"epoch {epoch}: loss {loss:.4f}")
        log_metric("loss", loss, step=epoch)

    out = os.environ.get("MLTRAIN_OUTPUT_DIR", "outputs")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "model.json"), "w") as fh:
        json.dump({"w": w, "b": b}, fh)
    print(f"model: w={w:.3f} b={b:.3f}")


if __name__ == "__main__":
    main()
