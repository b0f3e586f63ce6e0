"""DAKD stage B: distil a frozen adapted teacher into an adapted student (seed 000, eqs. 3-7).

The student keeps its own adaptation (the adapt loop's G/D alternation: L_seg on source, multi-level
L_adv on target, discriminators stepped on detached maps) and adds, per distilled domain d:

    L_d = lambda_kl * KL(main) + lambda_kl_aux * KL(aux) + lambda_mse * MSE(aux probs)
          + lambda_pseudo * CE(main, teacher argmax)
    L   = L_seg + L_adv + [L_source if paradigm in a, c] + lambda_target * [L_target if b, c, d]

KL is KL(teacher || student) * T^2 per pixel, summed over the classes under the default kl_reduction
"class_sum"; "class_mean" divides it by the number of classes (the scale of the reference code's
lambda_kl; dakd_core.losses.kl_distill).

Real-time students (seed 004, all off by default): `seg_loss=border_focal` replaces the source CE of
both heads by the border-focal loss; per distilled domain the loss gains
    lambda_border_kl * border-weighted KL(main)   (borders of the teacher's argmax labels)
    + lambda_l2_feature * L2 + lambda_cwd * CWD + lambda_lad * LAD   (on `feature_level` maps)
The feature terms need the live teacher; a 1x1 FeatureAdapter (student -> teacher channels, when
they differ) is trained with the student (heads' 10x lr) and saved in every checkpoint ("adapter"). Paradigm d is b started from
a paradigm-c checkpoint. Teacher targets come from the teacher cache (dakd_core.cache, maps warped
with the same CropPlan as the image) or from the live teacher (`teacher_online`), which is frozen
in eval mode so its BatchNorm statistics never move.

Teacher-quality gate: distilling from a teacher that is worse than the student on the target
hurts. With `gate_manifest` (a labelled target tuning split, never the reported val split) both are
scored first and a worse teacher stops the run (`gate="error"`) or warns (`gate="warn"`); without
it, unsupervised proxies (mean max probability, mean entropy on target images) are logged.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from torch import nn

from dakd_core.cache import (
    TeacherCache, load_frozen_teacher, sha256_uri, source_statistics_teacher, teacher_targets,
)
from dakd_core.data.dataset import ManifestDataset
from dakd_core.data.transforms import IGNORE_LABEL
from dakd_core.errors import ConfigError, DakdError, TrainingError
from dakd_core.losses import (
    FeatureAdapter,
    border_focal_loss,
    border_weighted_kl,
    border_weights,
    cwd_loss,
    kl_distill,
    l2_feature,
    lad_loss,
    mse_distill,
    pseudo_label_ce,
    pseudo_labels,
    segmentation_loss,
    segmentation_losses,
)
from dakd_core.models.checkpoint import load_checkpoint, load_state_into, make_payload
from dakd_core.train import engine
from dakd_core.train.adapt import OutputSpaceAdversary
from dakd_core.train.distill_config import PARADIGM_DOMAINS, DistillConfig

STAGE = "distill"
__all__ = ["DistillConfig", "run"]


# ----------------------------------------------------------------------------- data


class DistillDataset(ManifestDataset):
    """ManifestDataset items plus the teacher's cached maps, warped with the image's CropPlan.

    Extra item entries: `valid` (H, W bool: crop pixels that come from the image, not padding)
    and, with a cache, `t_main`/`t_aux` (C, h, w probabilities), `t_label` (H, W long, 255 where
    padded) and `t_conf` (H, W). The plan is redrawn from the same (seed, epoch, index) generator
    the parent used, so it is the image's plan exactly.
    """

    def __init__(self, *args, cache: TeacherCache | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache = cache

    def __getitem__(self, key):
        item = super().__getitem__(key)
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        row = self.rows[index]
        height, width = self.resize or (row["height"], row["width"])
        maps = {"valid": np.ones((height, width), np.uint8)}
        if self.cache is not None:
            t = self.cache.get(row["sample_id"])
            maps.update(
                t_main=t["main"].transpose(1, 2, 0), t_aux=t["aux"].transpose(1, 2, 0),
                t_label=t["label"], t_conf=t["confidence"],
            )
        if self.augment is not None:
            plan = self.augment.sample(height, width, np.random.default_rng((self.seed, int(epoch), int(index))))
            nearest = {"valid": 0, "t_label": IGNORE_LABEL}  # ids must not blend; their pad values
            maps = {k: plan.apply(v, nearest=k in nearest, pad_value=nearest.get(k, 0)) for k, v in maps.items()}
        item["valid"] = torch.from_numpy(maps.pop("valid").astype(bool))
        for k in ("t_main", "t_aux"):
            if k in maps:
                item[k] = torch.from_numpy(np.ascontiguousarray(maps[k].transpose(2, 0, 1)))
        if "t_label" in maps:
            item["t_label"] = torch.from_numpy(maps["t_label"].astype(np.int64))
            item["t_conf"] = torch.from_numpy(maps["t_conf"].astype(np.float32))
        return item


def distill_stream(cfg: DistillConfig, dist, manifest: str, resize, with_labels: bool, augment: bool,
                   cache: TeacherCache | None, name: str, seed_offset: int) -> engine.BatchStream:
    dataset = DistillDataset(
        manifest, crop=cfg.crop, train=True, with_labels=with_labels, seed=cfg.seed + seed_offset,
        resize=resize, scale_range=cfg.scale_range if augment else (1.0, 1.0), flip=cfg.flip and augment,
        cache=cache, memo_mib=cfg.data_memo_mib,
    )
    return engine.BatchStream(dataset, cfg.batch_size, cfg.seed + seed_offset, dist, cfg.num_workers, name)


# ----------------------------------------------------------------------------- losses


class FeatureTap(nn.Module):
    """The live teacher, keeping the `level` map of its last forward (one pass gives targets and
    features, and `teacher_targets` stays the single definition of the targets)."""

    def __init__(self, teacher: nn.Module, level: str):
        super().__init__()
        self.teacher, self.level, self.features = teacher, level, None

    def forward(self, x: torch.Tensor):
        feats = self.teacher.forward_features(x)
        self.features = feats[self.level]
        return self.teacher.forward_head(feats)


class DistillStudent(nn.Module):
    """forward(x) -> (SegOutput, student `level` map through the adapter, or None without feature
    distillation). The adapter lives in this module so DDP synchronises its gradients too."""

    def __init__(self, model: nn.Module, level: str | None = None, adapter: nn.Module | None = None):
        super().__init__()
        self.model, self.level, self.adapter = model, level, adapter

    def forward(self, x: torch.Tensor):
        if self.level is None:
            return self.model(x), None
        feats = self.model.forward_features(x)
        feature = feats[self.level] if self.adapter is None else self.adapter(feats[self.level])
        return self.model.forward_head(feats), feature


def build_adapter(cfg: DistillConfig, student: nn.Module, teacher: nn.Module) -> FeatureAdapter | None:
    """1x1 adapter from the student's to the teacher's `feature_level` channels (None when equal)."""
    level = cfg.feature_level
    for role, net in (("student", student), ("teacher", teacher)):
        if level not in net.feature_channels:
            raise ConfigError(
                f"feature_level '{level}' is not a feature map of the {role} {net.name} "
                f"(it has {sorted(net.feature_channels)})"
            )
    c_s, c_t = student.feature_channels[level], teacher.feature_channels[level]
    return None if c_s == c_t else FeatureAdapter(c_s, c_t)


def batch_targets(batch: dict, teacher: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    """Teacher targets of a device batch: from its cached entries, or the live frozen teacher
    (plus its `features` when it is a FeatureTap)."""
    valid = batch["valid"]
    if teacher is None:
        t = {"main": batch["t_main"], "aux": batch["t_aux"], "label": batch["t_label"], "confidence": batch["t_conf"]}
    else:
        t = teacher_targets(teacher, batch["image"])
        t["label"] = torch.where(valid, t["label"], torch.full_like(t["label"], IGNORE_LABEL))
        if isinstance(teacher, FeatureTap):
            t["features"] = teacher.features
    return {**t, "valid": valid}


# Optional terms: name suffix -> the config field weighting it (computed only when the weight > 0).
OPTIONAL_WEIGHTS = {"border_kl": "lambda_border_kl", "l2_feat": "lambda_l2_feature", "cwd": "lambda_cwd",
                    "lad": "lambda_lad"}


def distill_terms(output, targets: dict, cfg: DistillConfig, prefix: str,
                  student_features: torch.Tensor | None = None,
                  pseudo: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The unweighted DAKD terms of one domain (padding pixels excluded from all), plus the enabled
    border-weighted KL and feature terms (`student_features` already through the adapter).
    `pseudo`: L_pseudoT when `source_terms` already computed it."""
    T, valid = cfg.temperature, targets["valid"]
    if pseudo is None:
        pseudo = pseudo_label_ce(output.main, targets["label"], targets["confidence"], threshold=cfg.pseudo_threshold)
    terms = {
        f"{prefix}_kl_main": kl_distill(output.main, targets["main"], T=T, mask=valid, reduction=cfg.kl_reduction),
        f"{prefix}_kl_aux": kl_distill(output.aux, targets["aux"], T=T, mask=valid, reduction=cfg.kl_reduction),
        f"{prefix}_mse_aux": mse_distill(output.aux, targets["aux"], mask=valid),
        f"{prefix}_pseudo": pseudo,
    }
    if cfg.lambda_border_kl > 0:
        # Teacher argmax labels give borders on both domains (255 on padding -> weight 0).
        weights = border_weights(targets["label"])
        terms[f"{prefix}_border_kl"] = border_weighted_kl(output.main, targets["main"], weights, T=T)
    if cfg.feature_distillation:
        if student_features is None or "features" not in targets:
            raise TrainingError("feature distillation needs student and live-teacher feature maps")
        s_feat, t_feat = student_features, targets["features"]
        if cfg.lambda_l2_feature > 0:
            terms[f"{prefix}_l2_feat"] = l2_feature(s_feat, t_feat)
        if cfg.lambda_cwd > 0:
            terms[f"{prefix}_cwd"] = cwd_loss(s_feat, t_feat, tau=cfg.cwd_tau)
        if cfg.lambda_lad > 0:
            terms[f"{prefix}_lad"] = lad_loss(s_feat, t_feat)
    return terms


def weighted_distill(terms: dict[str, torch.Tensor], cfg: DistillConfig, prefix: str) -> torch.Tensor:
    loss = (
        cfg.lambda_kl * terms[f"{prefix}_kl_main"] + cfg.kl_aux_weight * terms[f"{prefix}_kl_aux"]
        + cfg.lambda_mse * terms[f"{prefix}_mse_aux"] + cfg.lambda_pseudo * terms[f"{prefix}_pseudo"]
    )
    for suffix, field in OPTIONAL_WEIGHTS.items():
        if f"{prefix}_{suffix}" in terms:
            loss = loss + getattr(cfg, field) * terms[f"{prefix}_{suffix}"]
    return loss


def _domain_terms(output, student_features, targets: dict, cfg: DistillConfig, prefix: str,
                  pseudo: torch.Tensor | None = None) -> dict:
    # Student features and a precomputed L_pseudoT go in only when present, so distill_terms
    # keeps its 4-argument form.
    extra = {k: v for k, v in (("student_features", student_features), ("pseudo", pseudo)) if v is not None}
    return distill_terms(output, targets, cfg, prefix, **extra)


def source_terms(output, labels: torch.Tensor, cfg: DistillConfig,
                 targets: dict | None = None) -> dict[str, torch.Tensor]:
    """Supervised source loss of both heads: CE, or the border-focal loss (eq. 3.3).

    With the batch's teacher `targets` (source distillation) and CE, also L_pseudoT of the main
    head ("s_pseudo"): its CE against the teacher's labels shares one resize and one log-softmax
    with its CE against the ground truth. Same values as two calls; a swiftnet_tiny step with both
    CEs on its main head: 109.9 -> 93.7 ms (`benchmarks/bench_step_kernels.py`, last table)."""
    if cfg.seg_loss == "ce":
        if targets is None or targets["label"].shape != labels.shape:
            return engine.source_seg_terms(output, labels)
        pseudo = pseudo_labels(targets["label"], targets["confidence"], cfg.pseudo_threshold)
        seg_main, s_pseudo = segmentation_losses(output.main, [labels, pseudo])
        return {"seg_main": seg_main, "seg_aux": segmentation_loss(output.aux, labels), "s_pseudo": s_pseudo}
    weights = border_weights(labels)  # once for both heads
    return {f"seg_{head}": border_focal_loss(getattr(output, head), labels, gamma=cfg.focal_gamma, weights=weights)
            for head in ("main", "aux")}


# ----------------------------------------------------------------------------- gate


@torch.no_grad()
def prediction_proxies(prob_batches) -> dict[str, float]:
    """Mean max probability and mean entropy (nats) over all pixels of (N, C, h, w) prob maps."""
    total_conf = total_ent = 0.0
    pixels = 0
    for probs in prob_batches:
        probs = probs.float()
        total_conf += probs.max(dim=1).values.sum().item()
        total_ent += -(probs * probs.clamp_min(1e-8).log()).sum(dim=1).sum().item()
        pixels += probs.shape[0] * probs.shape[2] * probs.shape[3]
    return {"mean_max_prob": total_conf / max(pixels, 1), "mean_entropy": total_ent / max(pixels, 1)}


def _model_probs(model, dataset, device, amp, limit):
    model.eval()
    for i in range(min(len(dataset), limit)):
        image = dataset[i]["image"][None].to(device)
        with engine.autocast(device, amp):
            yield model(image).main.float().softmax(dim=1)


def teacher_gate(cfg: DistillConfig, student, teacher, cache, device, amp) -> dict:
    """Score teacher and undistilled student; raise (gate=error) when the teacher is not better."""
    if cfg.gate_manifest:
        gate_set = ManifestDataset(cfg.gate_manifest, train=False, with_labels=True, resize=cfg.gate_resize)
        t_miou = engine.evaluate_miou(teacher, gate_set, cfg.num_classes, device, amp)
        s_miou = engine.evaluate_miou(student, gate_set, cfg.num_classes, device, amp)
        passed = t_miou > s_miou
        info = {"gate/teacher_miou": t_miou, "gate/student_miou": s_miou, "gate/passed": float(passed)}
        if not passed:
            msg = (f"teacher mIoU {t_miou:.4f} is not better than the undistilled student's {s_miou:.4f} "
                   f"on gate_manifest {cfg.gate_manifest}: distillation would not help")
            info["gate/message"] = msg
        return info
    # No labels: unsupervised proxies on target images, for the record only.
    targets = ManifestDataset(cfg.target_manifest, train=False, with_labels=False, resize=cfg.target_resize)
    info = {f"gate/student_{k}": v for k, v in prediction_proxies(_model_probs(student, targets, device, amp, cfg.gate_max_images)).items()}
    if teacher is not None:
        t_probs = _model_probs(teacher, targets, device, amp, cfg.gate_max_images)
    else:
        ids = [r["sample_id"] for r in targets.rows[: cfg.gate_max_images]]
        t_probs = (torch.from_numpy(cache.get(i)["main"])[None] for i in ids)
    info.update({f"gate/teacher_{k}": v for k, v in prediction_proxies(t_probs).items()})
    return info


# ----------------------------------------------------------------------------- loop


def run(cfg: DistillConfig) -> engine.TrainResult:
    return engine.launch(_train, cfg)


def _open_cache(cfg: DistillConfig, domains) -> TeacherCache | None:
    """The cache, checked against the teacher checkpoint and every distilled manifest (None when
    the teacher runs live or no domain is distilled)."""
    if cfg.teacher_online or not domains:
        return None
    cache = TeacherCache(cfg.teacher_cache, memo_mib=cfg.data_memo_mib)
    teacher_sha = sha256_uri(cfg.teacher) if cfg.teacher else None
    manifests = {"source": (cfg.source_manifest, cfg.source_resize), "target": (cfg.target_manifest, cfg.target_resize)}
    for d in domains:
        from dakd_core.data.manifest import read_manifest

        uri, resize = manifests[d]
        cache.check(teacher_sha, read_manifest(uri), uri, resize=resize)
    return cache


def _load_init(cfg: DistillConfig, model) -> None:
    init = load_checkpoint(cfg.init, map_location="cpu")
    if cfg.paradigm == "d" and (init.get("stage") != STAGE or init.get("config", {}).get("paradigm") != "c"):
        raise ConfigError(f"paradigm d starts from a paradigm-c distill checkpoint, but init {cfg.init} is not one")
    try:
        load_state_into(model, init, cfg.init)
    except TrainingError as e:
        raise TrainingError(f"init: {e}") from None


def _train(cfg: DistillConfig, dist: engine.Dist) -> engine.TrainResult:
    device = dist.device
    engine.seed_everything(cfg.seed + dist.rank)
    domains = PARADIGM_DOMAINS[cfg.paradigm]
    cache = _open_cache(cfg, domains)
    model, optimizer, scheduler = engine.build_segmenter(cfg, dist)
    adversary = OutputSpaceAdversary(cfg, dist)
    amp = engine.amp_enabled(cfg, device)
    scaler = engine.make_scaler(device, amp)
    # Teacher maps ride along only for the domains being distilled.
    source = distill_stream(cfg, dist, cfg.source_manifest, cfg.source_resize, True, True,
                            cache if "source" in domains else None, "source_manifest", 0)
    target = distill_stream(cfg, dist, cfg.target_manifest, cfg.target_resize, False, cfg.target_augment,
                            cache if "target" in domains else None, "target_manifest", 1)
    live_teacher = load_frozen_teacher(cfg.teacher, device) if cfg.teacher_online and domains else None
    # the live teacher labels each domain with its own BatchNorm statistics, as the cache does
    live_source_teacher = live_teacher
    if live_teacher is not None and "source" in domains:
        live_source_teacher = source_statistics_teacher(
            live_teacher, [cfg.source_manifest], lambda _uri: cfg.source_resize, cfg.bn_source_images, device)
    adapter = None
    if cfg.feature_distillation:
        adapter = build_adapter(cfg, model, live_teacher)
        live_teacher = FeatureTap(live_teacher, cfg.feature_level)
        live_source_teacher = FeatureTap(live_source_teacher, cfg.feature_level)
        if adapter is not None:
            adapter.to(device)
            # A new layer: the heads' lr multiplier (build_optimizer decides it); the schedule is
            # rebuilt to cover its group.
            mult = next(g["lr_mult"] for g in optimizer.param_groups if g.get("name") == "head")
            optimizer.add_param_group({"params": list(adapter.parameters()), "lr": cfg.lr * mult,
                                       "lr_mult": mult, "name": "adapter"})
            scheduler = engine.lr_schedule(optimizer, cfg.iterations, cfg.schedule, cfg.poly_power,
                                           cfg.warmup_iterations)

    def snapshot(step: int) -> dict:
        return make_payload(
            model, step,
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
            **adversary.state_dict(),
            data={"source": source.state_dict(), "target": target.state_dict()},
            paradigm=cfg.paradigm, init=cfg.init,
            **({"adapter": {k: t.detach().cpu() for k, t in adapter.state_dict().items()}} if adapter is not None else {}),
        )

    keeper = engine.RunKeeper(cfg, STAGE, dist, model, snapshot)
    start = 0
    payload = keeper.resume()
    if payload is not None:
        load_state_into(model, payload, keeper.store.url(engine.LAST))
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        scaler.load_state_dict(payload["scaler"])
        adversary.load_state_dict(payload)
        source.load_state_dict(payload["data"]["source"])
        target.load_state_dict(payload["data"]["target"])
        if adapter is not None:
            adapter.load_state_dict(payload["adapter"])
        start = int(payload["step"])
    else:
        _load_init(cfg, model)

    student = DistillStudent(model, cfg.feature_level if cfg.feature_distillation else None, adapter)
    net = _wrap_student(student, dist, unused_possible=cfg.feature_distillation and cfg.paradigm == "a")
    adversary.wrap()

    with keeper.tracking():
        if start == 0 and dist.is_main and domains:
            _run_gate(cfg, model, live_teacher, cache, device, amp)
        net.train()
        for step in keeper.steps(start):
            src = engine.to_device(source.next(), device)
            tgt = engine.to_device(target.next(), device)
            size = tuple(src["image"].shape[-2:])
            optimizer.zero_grad(set_to_none=True)
            adversary.zero_grad()

            # 1. segmenter step, discriminators fixed: source seg (+ source distillation) ...
            adversary.freeze()
            with engine.no_sync(net):  # the target backward below all-reduces both gradients
                with engine.autocast(device, amp), engine.bn_running_stats_frozen(net, cfg.bn_statistics == "target"):
                    out_s, feat_s = net(src["image"])
                src_targets = batch_targets(src, live_source_teacher) if "source" in domains else None
                terms = source_terms(out_s, src["label"], cfg, src_targets)
                loss_s = terms["seg_main"] + cfg.aux_weight * terms["seg_aux"]
                if src_targets is not None:
                    terms.update(_domain_terms(out_s, feat_s, src_targets, cfg, "s", pseudo=terms.get("s_pseudo")))
                    loss_s = loss_s + weighted_distill(terms, cfg, "s")
                scaler.scale(loss_s).backward()
            # ... then target adversarial (+ lambda_target * target distillation).
            with engine.autocast(device, amp):
                out_t, feat_t = net(tgt["image"])
                terms.update(adversary.generator_terms(out_t, size))
            loss_t = adversary.generator_loss(terms)
            if "target" in domains:
                terms.update(_domain_terms(out_t, feat_t, batch_targets(tgt, live_teacher), cfg, "t"))
                loss_t = loss_t + cfg.lambda_target * weighted_distill(terms, cfg, "t")
            scaler.scale(loss_t).backward()

            # 2. discriminator step on detached maps.
            adversary.unfreeze()
            terms.update(adversary.discriminator_terms(out_s, out_t, size, amp))
            scaler.scale(terms["d_main"] + terms["d_aux"]).backward()

            losses = engine.check_finite(step, terms)  # before any optimizer step: NaN guard
            scaler.step(optimizer)
            adversary.step(scaler)
            scaler.update()
            scheduler.step()
            adversary.schedule()
            keeper.end_step(step, losses)
        return keeper.finish(cfg.iterations - start)


def _wrap_student(student: DistillStudent, dist: engine.Dist, unused_possible: bool) -> nn.Module:
    """DDP over student + adapter. With paradigm a the adapter only gets gradients in the source
    backward (under no_sync), so DDP must be told that parameters may go unused."""
    if not (dist.enabled and unused_possible):
        return engine.wrap_ddp(student, dist)
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(student, device_ids=ids, find_unused_parameters=True)


def _run_gate(cfg: DistillConfig, student, live_teacher, cache, device, amp) -> None:
    """The teacher-quality gate, logged to MLflow before it may stop the run."""
    teacher = live_teacher
    if teacher is None and cfg.teacher and cfg.gate_manifest:
        teacher = load_frozen_teacher(cfg.teacher, device)
    info = teacher_gate(cfg, student, teacher, cache, device, amp)
    message = info.pop("gate/message", None)
    if cfg.log_mlflow:
        from dakd_core.tracking import log_metrics, set_tags

        log_metrics({k: v for k, v in info.items() if math.isfinite(v)}, step=0)
        decision = "proxies-only" if "gate/passed" not in info else ("pass" if info["gate/passed"] else f"fail-{cfg.gate}")
        set_tags({"dakd.gate_decision": decision})
    if message:
        if cfg.gate == "error":
            raise DakdError(message + " (use gate=warn / --gate warn to distil anyway)")
        print(f"dakd distill: warning: {message}", file=sys.stderr)

