"""Challenger and champion splats on the same held-out views, view by view.

Each held-out view is rendered by both models with the same rasteriser, SH degree and background
as training evaluates them (`mlops_assets.core.nvs.train.evaluate`); per view: PSNR and SSIM of
each, and one image ``ground truth | render | absolute error`` per model (the error amplified by
``error_gain`` so small differences show), the champion's row under the challenger's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from mlops_assets.core.nvs.data import NVSView
from mlops_assets.core.nvs.gaussians import Splats
from mlops_assets.core.nvs.train import Rasterizer
from mlops_assets.core.tracking import Tracker


@dataclass(frozen=True)
class ViewScore:
    """One model on one held-out view."""

    psnr: float
    ssim: float


@dataclass(frozen=True)
class ViewComparison:
    """A held-out view: both models' scores and the truth | render | error panels."""

    name: str
    challenger: ViewScore
    champion: ViewScore | None
    image: NDArray[np.uint8]  # [rows * H, 3 * W, 3]: one row per model

    def to_dict(self) -> dict[str, Any]:
        """The scores (the image is shown, not stored here)."""
        return {
            "name": self.name,
            "challenger": {"psnr": self.challenger.psnr, "ssim": self.challenger.ssim},
            "champion": None
            if self.champion is None
            else {"psnr": self.champion.psnr, "ssim": self.champion.ssim},
        }


def _to_uint8(image: Tensor) -> NDArray[np.uint8]:  # [H, W, 3] in 0..1
    return (image.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


@torch.no_grad()
def _render_and_score(
    splats: Splats,
    view: NVSView,
    rasterize: Rasterizer,
    sh_degree: int,
    background: Tensor,  # [3]
    device: torch.device,
    error_gain: float,
) -> tuple[ViewScore, NDArray[np.uint8]]:
    image, _, _ = rasterize(
        splats,
        view.viewmat[None].to(device),
        view.K[None].to(device),
        view.width,
        view.height,
        sh_degree,
        background.to(device),
    )
    render = image[0].clamp(0, 1).cpu()  # [H, W, 3]
    truth = view.image.cpu()  # [H, W, 3]
    pred, target = render.permute(2, 0, 1)[None], truth.permute(2, 0, 1)[None]
    psnr = float(peak_signal_noise_ratio(pred, target, data_range=1.0))
    ssim = structural_similarity_index_measure(pred, target, data_range=1.0)
    assert isinstance(ssim, Tensor)
    error = ((render - truth).abs() * error_gain).clamp(0, 1)
    row = np.concatenate([_to_uint8(truth), _to_uint8(render), _to_uint8(error)], axis=1)
    return ViewScore(psnr, float(ssim)), row


def compare_views(
    challenger: Splats,
    champion: Splats | None,
    views: Sequence[NVSView],
    rasterize: Rasterizer,
    sh_degree: int,
    background: Tensor,  # [3]
    device: torch.device,
    champion_sh_degree: int | None = None,
    error_gain: float = 4.0,
) -> list[ViewComparison]:
    """Both models on every view in ``views`` (the held-out ones)."""
    out: list[ViewComparison] = []
    for view in views:
        score, row = _render_and_score(
            challenger, view, rasterize, sh_degree, background, device, error_gain
        )
        champion_score = None
        rows = [row]
        if champion is not None:
            degree = sh_degree if champion_sh_degree is None else champion_sh_degree
            champion_score, champion_row = _render_and_score(
                champion, view, rasterize, degree, background, device, error_gain
            )
            rows.append(champion_row)
        out.append(ViewComparison(view.name, score, champion_score, np.concatenate(rows)))
    return out


def comparison_table(views: Sequence[ViewComparison]) -> str:
    """Markdown: one row per held-out view, PSNR and SSIM of both models and the difference."""
    columns = ["view", "PSNR challenger", "PSNR champion", "Δ PSNR"]
    columns += ["SSIM challenger", "SSIM champion", "Δ SSIM"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for v in views:
        c, h = v.challenger, v.champion
        lines.append(
            f"| {v.name} | {c.psnr:.2f} | {'-' if h is None else f'{h.psnr:.2f}'} | "
            f"{'-' if h is None else f'{c.psnr - h.psnr:+.2f}'} | {c.ssim:.4f} | "
            f"{'-' if h is None else f'{h.ssim:.4f}'} | "
            f"{'-' if h is None else f'{c.ssim - h.ssim:+.4f}'} |"
        )
    return "\n".join(lines)


COMPARISON_DIR = "heldout_comparison"


def log_view_comparison(
    tracker: Tracker, run_id: str, views: Sequence[ViewComparison], champion: str | None
) -> None:
    """The panels and scores in the run, for ``nvs/registered_splats`` to show.

    ``champion`` names the version compared with (None: there was none).
    """
    from PIL import Image

    payload = {"champion": champion, "views": [v.to_dict() for v in views]}
    tracker.log_dict(run_id, payload, f"{COMPARISON_DIR}/views.json")
    for i, view in enumerate(views):
        tracker.log_image(run_id, Image.fromarray(view.image), f"{COMPARISON_DIR}/{i:03d}.png")
    metrics: dict[str, float] = {}
    for view in views:
        metrics[f"heldout_psnr.{view.name}"] = view.challenger.psnr
        metrics[f"heldout_ssim.{view.name}"] = view.challenger.ssim
    if metrics:
        tracker.log_metrics(run_id, metrics, step=0)


def load_view_comparison(
    tracker: Tracker, run_id: str, directory: Path
) -> tuple[str | None, list[ViewComparison]]:
    """What `log_view_comparison` logged in ``run_id`` (downloaded under ``directory``).

    An empty list when the run has none (trained before the comparison existed).
    """
    import json

    from PIL import Image

    names = {a.path for a in tracker.client.list_artifacts(run_id, COMPARISON_DIR)}
    if f"{COMPARISON_DIR}/views.json" not in names:
        return None, []
    local = Path(tracker.client.download_artifacts(run_id, COMPARISON_DIR, str(directory)))
    payload = json.loads((local / "views.json").read_text())
    views: list[ViewComparison] = []
    for i, item in enumerate(payload["views"]):
        image = np.asarray(Image.open(local / f"{i:03d}.png").convert("RGB"))
        champion = item["champion"]
        views.append(
            ViewComparison(
                item["name"],
                ViewScore(**item["challenger"]),
                None if champion is None else ViewScore(**champion),
                image,
            )
        )
    return payload["champion"], views
