"""The training loop shared by fine-tuning (after channel pruning) and distillation.

Documented loop: Adam (learning_rate, weight_decay), ``epochs`` passes over data.training in
shuffled mini-batches of ``batch_size`` (order from a generator seeded with ``seed``). Loss:

    kd_weight * KL(softmax(teacher / T) || softmax(student / T)) * T^2  +  ce_weight * CE(student, labels)

(the CE term only when the training data has labels; the KD term only when teacher outputs are
given). After each epoch the validation score is computed (top-1 against labels, else cosine to the
teacher's validation outputs); the best epoch's weights are kept and restored at the end, and
training stops early after ``patience`` epochs without improvement. A non-finite loss stops the
pass with an error naming the epoch and step. Deterministic under the seed (CPU, fixed threads).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

from ..errors import StageError
from ..progress_hooks import report


def seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _forward(module, arrays: dict, names: list[str], idx=None):
    import torch

    args = [torch.from_numpy(np.ascontiguousarray(arrays[n] if idx is None else arrays[n][idx])) for n in names]
    y = module(*args)
    if isinstance(y, (list, tuple)):
        y = y[0]
    elif isinstance(y, dict):
        y = next(iter(y.values()))
    return y


def _predict(module, arrays: dict, names: list[str], batch: int = 512) -> np.ndarray:
    import torch

    module.eval()
    n = len(arrays[names[0]])
    outs = []
    with torch.no_grad():
        for i in range(0, n, batch):
            outs.append(_forward(module, arrays, names, slice(i, i + batch)).numpy())
    return np.concatenate(outs, axis=0)


def val_score(module, val: tuple, names: list[str], teacher_val: np.ndarray | None) -> tuple[str, float]:
    arrays, labels = val
    out = _predict(module, arrays, names)
    if labels is not None and out.ndim == 2:
        return "top1", float(np.mean(out.argmax(1) == np.asarray(labels).reshape(-1)))
    if teacher_val is None:
        return "none", 0.0
    from ..validate.fidelity import cosine_rows

    return "cosine_to_teacher", float(cosine_rows(out, teacher_val).mean())


def fit(module, train: tuple, val: tuple | None, names: list[str], cfg, where: str, teacher: np.ndarray | None = None,
        teacher_val: np.ndarray | None = None, temperature: float = 1.0, kd_weight: float = 0.0, ce_weight: float = 1.0) -> dict:
    """Train ``module`` in place; return the history. ``train``/``val`` are (arrays by input name, labels or None)."""
    import torch
    import torch.nn.functional as F

    seed_everything(cfg.seed)
    arrays, labels = train
    n = len(arrays[names[0]])
    y = torch.from_numpy(np.asarray(labels).astype(np.int64).reshape(-1)) if labels is not None and ce_weight > 0 else None
    t = torch.from_numpy(teacher.astype(np.float32)) if teacher is not None and kd_weight > 0 else None
    if y is None and t is None:
        raise StageError("nothing to train on: data.training has no labels and there are no teacher outputs", hint="give labels with the training data", where=where)
    opt = torch.optim.Adam(module.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    best = (-math.inf, None, 0)  # score, state, epoch
    stale = 0
    T = float(temperature)
    for epoch in range(1, cfg.epochs + 1):
        module.train()
        perm = torch.randperm(n, generator=gen).numpy()
        total, steps = 0.0, 0
        for step, i in enumerate(range(0, n, cfg.batch_size)):
            idx = perm[i : i + cfg.batch_size]
            opt.zero_grad()
            out = _forward(module, arrays, names, idx)
            loss = out.new_zeros(())
            if y is not None:
                loss = loss + ce_weight * F.cross_entropy(out, y[idx])
            if t is not None:
                kd = F.kl_div(F.log_softmax(out / T, dim=1), F.softmax(t[idx] / T, dim=1), reduction="batchmean")
                loss = loss + kd_weight * kd * T * T
            if not torch.isfinite(loss):
                raise StageError(
                    f"training diverged: loss is {loss.item()} at epoch {epoch}, step {step + 1}",
                    hint="lower learning_rate (or check the training data for extreme values)", where=where
                )
            loss.backward()
            opt.step()
            total += float(loss.item())
            steps += 1
            report("steps", step + 1, -(-n // cfg.batch_size), epoch=epoch)
        entry = {"epoch": epoch, "loss": round(total / max(steps, 1), 6)}
        if val is not None:
            metric, score = val_score(module, val, names, teacher_val)
            entry[metric] = round(score, 6)
            if score > best[0]:
                best, stale = (score, copy.deepcopy(module.state_dict()), epoch), 0
            else:
                stale += 1
        history.append(entry)
        shown: dict[str, Any] = {k: v for k, v in entry.items() if k != "epoch"}  # loss and the validation metric
        report("epochs", epoch, cfg.epochs, **shown)
        print(f"{where}: epoch {epoch}/{cfg.epochs} " + " ".join(f"{k} {v}" for k, v in entry.items() if k != "epoch"), flush=True)
        if cfg.patience is not None and stale >= cfg.patience:
            break
    if best[1] is not None:
        module.load_state_dict(best[1])
    module.eval()
    return {
        "optimizer": "adam", "epochs": cfg.epochs, "epochs_run": len(history), "best_epoch": best[2] or len(history),
        "early_stopped": len(history) < cfg.epochs, "seed": cfg.seed, "learning_rate": cfg.learning_rate,
        "batch_size": cfg.batch_size, "history": history,
    }
