"""Small CNN digit classifier for 16x16 digit images in [-1, 1] (sample-quality proxy and Frechet-distance features).

The network is trained by :func:`train_classifier` (driven by ``python -m benchmarks.train --model classifier``) and
shipped as ``benchmarks/assets/digits-classifier/{config.json,model.safetensors}``. Load it with :func:`load_classifier`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
DEFAULT_PATH = ASSETS_DIR / "digits-classifier"
IMAGE_SIZE = 16


class DigitCNN(nn.Module):
    """Two conv stages (16->8->4) and an MLP head; ``features`` gives the penultimate activations.

    Input: ``[B, 1, 16, 16]`` float images in [-1, 1]. ``forward`` returns ``[B, num_classes]`` logits.
    """

    def __init__(self, width: int = 32, feature_dim: int = 128, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        if width < 1 or feature_dim < 1 or num_classes < 2:
            raise ValueError("width and feature_dim must be >= 1 and num_classes >= 2")
        self.config = {"width": width, "feature_dim": feature_dim, "num_classes": num_classes, "dropout": dropout}
        w = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.body = nn.Sequential(
            block(1, w), block(w, w), nn.MaxPool2d(2), block(w, 2 * w), block(2 * w, 2 * w), nn.MaxPool2d(2)
        )
        self.fc = nn.Linear(2 * w * (IMAGE_SIZE // 4) ** 2, feature_dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"expected input of shape [B, 1, {IMAGE_SIZE}, {IMAGE_SIZE}], got {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``[B, feature_dim]`` (post-ReLU), e.g. for a Frechet distance."""
        self._check(x)
        return F.relu(self.fc(self.body(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes]``."""
        return self.head(self.drop(self.features(x)))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random integer shifts of up to 1 pixel (background -1 fills the border)."""
    pad = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2,), generator=gen).tolist()
    return pad[:, :, dy : dy + IMAGE_SIZE, dx : dx + IMAGE_SIZE]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode."""
    was_training = model.training
    model.eval()
    correct = sum(
        (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
        for i in range(0, len(x), batch_size)
    )
    model.train(was_training)
    return correct / max(1, len(x))


def train_classifier(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    out: str | Path | None = None,
    log_every: int = 50,
) -> tuple[DigitCNN, dict]:
    """Train :class:`DigitCNN` with AdamW + warmup + cosine; save to ``out`` (if not None; never the shipped bundle
    by default). Returns (model, stats)."""
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError("steps and batch_size must be >= 1 and lr > 0")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = DigitCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, min(100, steps // 10))
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, len(x_train), (batch_size,), generator=gen)
        xb = _augment(x_train[idx], gen)
        cur = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = cur
        loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(
                f"[classifier] step {step:5d}/{steps} loss {loss.item():.4f} lr {cur:.2e} "
                f"elapsed {time.time() - t0:.1f}s",
                flush=True,
            )
    model.eval()
    stats = {
        "train_accuracy": accuracy(model, x_train, y_train),
        "test_accuracy": accuracy(model, x_test, y_test),
        "final_loss": loss.item(),
        "train_seconds": round(time.time() - t0, 1),
        "steps": steps,
        "batch_size": batch_size,
        "n_train": len(x_train),
        "n_test": len(x_test),
    }
    print(f"[classifier] train acc {stats['train_accuracy']:.4f}  test acc {stats['test_accuracy']:.4f}", flush=True)
    if out is not None:
        save_classifier(model, out, stats)
    return model, stats


def save_classifier(model: DigitCNN, path: str | Path, stats: dict | None = None) -> None:
    """Write ``config.json`` (architecture + training stats) and ``model.safetensors`` (fp32) into ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {
        "class_name": "benchmarks.classifier.DigitCNN",
        "input": "[B,1,16,16] float in [-1,1]",
        "config": model.config,
        "stats": stats or {},
    }
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))


def load_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> DigitCNN:
    """Load the shipped (or a given) classifier folder; returns the model in eval mode with grads disabled."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_PATH
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{path} does not hold config.json and model.safetensors "
            "(train with `python -m benchmarks.train --model classifier`)"
        )
    cfg = json.loads((path / "config.json").read_text())
    model = DigitCNN(**cfg["config"])
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    model.to(device).eval().requires_grad_(False)
    return model
