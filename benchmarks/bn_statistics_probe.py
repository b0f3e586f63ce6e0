"""Which BatchNorm statistics does an adapted model need? A probe on a results-bench run.

Adaptation alternates source and target forward passes through one network. With trainable
BatchNorm each domain is normalised with its own batch statistics while training, but the running
averages that evaluation uses mix both. This script measures that on finished checkpoints (no dakd
training code beyond loading): target mIoU with the stored running statistics, and after
re-estimating them on the unlabelled target train images (AdaBN); then fine-tunes the adapted
student on the teacher's target pseudo-labels in a bare loop, with and without a source batch.

    python benchmarks/bn_statistics_probe.py --store WORK/store --run-dir WORK/store/runs/seed0 \
        --finetune separate,joint,target_only

`--run-dir` holds pretrain_student/, adapt_teacher/, adapt_student/ (best.pt each), `--store` the
ingested datasets of `dakd bench results` (datasets/{src/all,tgt/train,tgt/tune,tgt/val,tgt_labelled/train}).
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from dakd_core.data.dataset import ManifestDataset
from dakd_core.evaluation.metrics import confusion_matrix, miou_from_confusion
from dakd_core.models.checkpoint import load_model

SIZE = (64, 128)


def load_split(manifest: str, labels: bool = True):
    ds = ManifestDataset(manifest, crop=None, train=False, with_labels=labels, resize=SIZE)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([i["image"] for i in items]), torch.stack([i["label"] for i in items]) if labels else None


@torch.no_grad()
def logits(model, x):
    model.eval()
    return torch.cat([F.interpolate(model(x[i:i + 32]).main, size=x.shape[-2:], mode="bilinear", align_corners=False)
                      for i in range(0, len(x), 32)])


def miou(model, x, y) -> float:
    return 100 * miou_from_confusion(confusion_matrix(logits(model, x).argmax(1), y, 19))


def target_statistics(model, x, batch: int = 8):
    """A copy whose BatchNorm running averages are the exact mean over target batches (AdaBN):
    dakd_core.cache.with_domain_statistics over the whole batches of `x`."""
    from dakd_core.cache import with_domain_statistics

    return with_domain_statistics(model, [x[i:i + batch] for i in range(0, len(x) - batch + 1, batch)])


def finetune(init, data, labels, mode: str, iters: int, lr: float, batch: int = 8):
    """AdamW + cosine on teacher pseudo-labels of target train; `mode`: target_only, separate
    (source CE in its own forward pass: per-domain batch statistics), joint (one concatenated batch)."""
    model = copy.deepcopy(init).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    up = lambda o, x: F.interpolate(o.main, size=x.shape[-2:], mode="bilinear", align_corners=False)
    for it in range(1, iters + 1):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * it / iters))
        i = torch.randint(0, len(data["tgt_x"]), (batch,), generator=g)
        x, y = data["tgt_x"][i], labels[i]
        if torch.rand(1, generator=g) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        j = torch.randint(0, len(data["src_x"]), (batch,), generator=g)
        xs, ys = data["src_x"][j], data["src_y"][j]
        if mode == "joint":
            out = up(model(torch.cat([xs, x])), x)
            loss = F.cross_entropy(out[:batch], ys, ignore_index=255) + F.cross_entropy(out[batch:], y)
        else:
            loss = F.cross_entropy(up(model(x), x), y)
            if mode == "separate":
                loss = loss + F.cross_entropy(up(model(xs), xs), ys, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--finetune", default="", help="comma list of target_only,separate,joint")
    p.add_argument("--iters", type=int, default=250)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    torch.manual_seed(0)
    d = f"{args.store.rstrip('/')}/datasets"
    data = {}
    data["tgt_x"], data["tgt_y"] = load_split(f"{d}/tgt_labelled/train/manifest.parquet")
    data["tune_x"], data["tune_y"] = load_split(f"{d}/tgt/tune/manifest.parquet")
    data["val_x"], data["val_y"] = load_split(f"{d}/tgt/val/manifest.parquet")
    data["src_x"], data["src_y"] = load_split(f"{d}/src/all/manifest.parquet")
    models = {name: load_model(f"{args.run_dir.rstrip('/')}/{name}/best.pt")[0]
              for name in ("adapt_teacher", "adapt_student", "pretrain_student")}
    print("| model | BatchNorm statistics | target tune | target val |\n|---|---|---:|---:|")
    for name, model in models.items():
        adabn = target_statistics(model, data["tgt_x"])
        for label, m in (("stored", model), ("target (AdaBN)", adabn)):
            print(f"| {name} | {label} | {miou(m, data['tune_x'], data['tune_y']):.1f} | {miou(m, data['val_x'], data['val_y']):.1f} |")
    for teacher_stats in ("stored", "target (AdaBN)"):
        teacher = models["adapt_teacher"] if teacher_stats.startswith("stored") else target_statistics(models["adapt_teacher"], data["tgt_x"])
        pseudo = logits(teacher, data["tgt_x"]).argmax(1)
        quality = 100 * miou_from_confusion(confusion_matrix(pseudo, data["tgt_y"], 19))
        for mode in filter(None, args.finetune.split(",")):
            t0 = time.perf_counter()
            student = finetune(models["adapt_student"], data, pseudo, mode, args.iters, args.lr)
            print(f"| student fine-tuned on teacher pseudo-labels ({teacher_stats} teacher, pseudo-label mIoU "
                  f"{quality:.1f}), {mode} | stored | {miou(student, data['tune_x'], data['tune_y']):.1f} | "
                  f"{miou(student, data['val_x'], data['val_y']):.1f} |  ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
