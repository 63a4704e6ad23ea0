"""How well can QT-Opt's gripper view tell a good close from a bad one? An offline probe on a store.

    .venv/bin/python benchmarks/close_auc.py --store runs/qtopt_5obj_run3/store \
        --variants base,mirror,p32_mirror,first_mirror --seeds 3

Q(s_T, close) is the one part of the Q-function whose target is exact for any policy: the
attempt's label. A policy can only close over the right place as well as Q separates successful
from failed closes, so this trains the gripper-view network (fleet/methods/qtopt/
gripper_network.py) on the closing steps of a store's attempts, supervised on their labels,
and reports the AUC on held-out attempts (a fifth, by a stable hash of the attempt id, as the
learner holds them out). Each variant changes one thing against `base` (16 px patches over
16 cm, the newest frame, no augmentation); all variants train on the same split with the same
seeds in this process, and the figure is the median over seeds of the variant's best held-out
AUC and its difference to base's on the same seed. Why offline: a fleet run costs 1-2 h per
setting on this machine, this a minute per setting and seed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet.learner.api import binary_auc  # noqa: E402
from fleet.learner.dataset import decode_rgb, is_validation  # noqa: E402
from fleet.methods.qtopt.encoding import encode_actions, encode_states  # noqa: E402
from fleet.methods.qtopt.gripper_network import GripperQConfig, GripperQNet  # noqa: E402
from fleet.store.reader import StoreReader  # noqa: E402
from fleet.wire.depth_image import decode_depth_png  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One setting of the probe: the patch, the frame it is read from, the augmentation."""

    patch_size: int = 16
    patch_extent: float = 0.16
    frame: str = "last"  # "last": the closing step's frame I_T; "first": I_0, arm out of view
    mirror: bool = False
    #: The patch convs' channels; () is (16, 32, 32), plus a fourth 32 for patches >= 32 px.
    channels: tuple[int, ...] = ()
    first_stride: int = 1


VARIANTS = {"base": Variant(), "mirror": Variant(mirror=True),
            "p32": Variant(patch_size=32), "p32_mirror": Variant(patch_size=32, mirror=True),
            "wide_mirror": Variant(patch_extent=0.24, mirror=True),
            "first_mirror": Variant(frame="first", mirror=True),
            # the grasp-point network's patch trunk: 32 px, three convs (16, 32, 64)
            "p32w_mirror": Variant(patch_size=32, mirror=True, channels=(16, 32, 64)),
            # 32 px through a strided first conv: about the 16 px network's cost
            "p32s2_mirror": Variant(patch_size=32, mirror=True, channels=(16, 32, 32),
                                    first_stride=2),
            "p32s2w_mirror": Variant(patch_size=32, mirror=True, channels=(16, 32, 64),
                                     first_stride=2)}


@dataclass
class Closes:
    """The closing step of every labelled attempt (and its first frame)."""

    images: dict[str, torch.Tensor]  # frame -> (N, 3, H, W) in [0, 1]
    depths: dict[str, torch.Tensor]  # frame -> (N, 1, H, W) m
    openings: np.ndarray
    poses: np.ndarray  # (N, 7)
    labels: torch.Tensor
    held_out: np.ndarray  # bool (N,)


def load_closes(store: Path, max_attempts: int, size: int) -> Closes:
    """Reads the store once, step 0 and the last step of each labelled attempt."""
    reader = StoreReader(store, include_depth=True)
    t = reader.attempts()
    labelled = {a: (bool(lab), n) for a, lab, n in zip(t["attempt_id"].to_pylist(),
                                                        t["label"].to_pylist(),
                                                        t["num_steps"].to_pylist())
                if lab is not None and n > 0}
    first: dict[str, tuple] = {}
    last: dict[str, tuple] = {}
    columns = ["attempt_id", "step", "image_jpeg", "depth_png", "ee_pose", "gripper"]
    for chunk, _ in reader.iter_steps(columns=columns):
        d = chunk.to_pydict()
        for aid, step, jpeg, png, pose, grip in zip(*(d[c] for c in columns)):
            if aid not in labelled or png is None:
                continue
            if step == 0:
                first[aid] = (jpeg, png)
            if step == labelled[aid][1] - 1:
                last[aid] = (jpeg, png, pose, grip)
    ids = [a for a in last if a in first][:max_attempts]
    reader.close()
    if len(ids) < 50:
        sys.exit(f"close_auc: {store} has {len(ids)} labelled attempts with depth images; the "
                 f"probe needs at least 50 (point --store at a fleet run's store/ directory)")

    def frames(rows: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = np.stack([decode_rgb(r[0], size, size) for r in rows]).transpose(0, 3, 1, 2)
        dep = np.stack([cv2.resize(decode_depth_png(r[1]), (size, size),
                                   interpolation=cv2.INTER_NEAREST) for r in rows])[:, None]
        return (torch.from_numpy(np.ascontiguousarray(rgb)).float() / 255.0,
                torch.from_numpy(dep.astype(np.float32)) / 1000.0)

    images, depths = {}, {}
    for name, rows in (("last", [last[a] for a in ids]), ("first", [first[a] for a in ids])):
        images[name], depths[name] = frames(rows)
    return Closes(images, depths, np.array([last[a][3] for a in ids]),
                  np.array([last[a][2] for a in ids], np.float64).reshape(-1, 7),
                  torch.tensor([float(labelled[a][0]) for a in ids]),
                  np.array([is_validation(a, 0.2) for a in ids]))


def probe(data: Closes, variant: Variant, seed: int, steps: int, size: int) -> float:
    """Best held-out AUC of Q(s_T, close) over training (evaluated every 250 steps)."""
    torch.manual_seed(seed)
    cfg = GripperQConfig(image_height=size, image_width=size, use_depth=True,
                         patch_size=variant.patch_size, patch_extent=variant.patch_extent,
                         first_stride=variant.first_stride,
                         channels=variant.channels or (
                             (16, 32, 32) + ((32,) if variant.patch_size >= 32 else ())))
    net = GripperQNet(cfg)
    with torch.no_grad():
        features = torch.cat([net.image_features(data.images[variant.frame][i:i + 256],
                                                 data.depths[variant.frame][i:i + 256])
                              for i in range(0, len(data.labels), 256)])
    states = encode_states(data.openings, data.poses, cfg)
    close = encode_actions(np.tile([[0.0, 0.0, 0.0, 0.0, 1.0]], (len(data.labels), 1)),
                           cfg.motion_scale)
    train, test = np.flatnonzero(~data.held_out), np.flatnonzero(data.held_out)
    opt = torch.optim.Adam(net.parameters(), 1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    best = 0.0
    for step in range(1, steps + 1):
        b = torch.from_numpy(train[torch.randint(len(train), (64,), generator=g).numpy()])
        mirror = torch.rand(64, 2, generator=g) < 0.5 if variant.mirror else None
        net.train()
        logits = net.score_batched(features[b], states[b], close[b][:, None], mirror)[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, data.labels[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps:
            net.eval()
            with torch.no_grad():
                held = torch.cat([net.score_batched(features[test[i:i + 256]],
                                                    states[test[i:i + 256]],
                                                    close[test[i:i + 256]][:, None])[:, 0]
                                  for i in range(0, len(test), 256)])
            best = max(best, binary_auc(held.numpy(), data.labels[test].numpy().astype(bool)))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, required=True, help="a fleet store directory")
    ap.add_argument("--variants", default="base,mirror",
                    help=f"comma-separated, from {', '.join(VARIANTS)} (base is always run)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4000, help="training steps per probe")
    ap.add_argument("--image-size", type=int, default=128, help="the camera's side, px")
    ap.add_argument("--max-attempts", type=int, default=100_000)
    args = ap.parse_args(argv)
    names = ["base"] + [v for v in args.variants.split(",") if v and v != "base"]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(1)
    t0 = time.monotonic()
    data = load_closes(args.store, args.max_attempts, args.image_size)
    print(f"close_auc: {len(data.labels)} closing steps ({int(data.held_out.sum())} held out), "
          f"success rate {float(data.labels.mean()):.2f}, loaded in {time.monotonic() - t0:.0f} s",
          flush=True)
    auc = {n: [probe(data, VARIANTS[n], s, args.steps, args.image_size)
               for s in range(args.seeds)] for n in names}
    for n in names:
        diffs = [a - b for a, b in zip(auc[n], auc["base"])]
        print(f"close_auc: {n:13s} {VARIANTS[n]}: held-out AUC median "
              f"{statistics.median(auc[n]):.3f} ({', '.join(f'{a:.3f}' for a in auc[n])}), "
              f"minus base {statistics.median(diffs):+.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
