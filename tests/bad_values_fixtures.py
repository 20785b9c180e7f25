"""Small inputs for the bad-value tests (tests/test_bad_values.py, test_budget.py, test_cli_values.py,
test_properties.py): a legacy-ST section on an 800 x 800 px JPEG (the ``legacy_section`` and
``legacy_adata`` fixtures of conftest.py), a tiny model built in memory, and a helper that runs the
``histokg`` command in this process and returns its exit status and stderr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

PITCH_PX = 40.0  # legacy ST spots 200 um apart: 5 um/px
GRID = 6


def write_legacy_section(out: Path, *, seed: int = 0) -> dict[str, Path]:
    """counts.tsv, spots.tsv and img.jpg of a 6 x 6 legacy-ST grid on a pink disk of tissue."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = np.full((800, 800, 3), 245, np.uint8)
    yy, xx = np.mgrid[0:800, 0:800]
    disk = (xx - 400) ** 2 + (yy - 400) ** 2 < 300**2
    img[disk] = rng.normal([180, 100, 160], 20, (int(disk.sum()), 3)).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(out / "img.jpg", quality=90)
    ids, px, py, ax, ay = [], [], [], [], []
    for i in range(GRID):
        for j in range(GRID):
            ids.append(f"{i + 1}x{j + 1}")
            ax.append(i + 1)
            ay.append(j + 1)
            px.append(300 + i * PITCH_PX)
            py.append(300 + j * PITCH_PX)
    spots = pd.DataFrame(
        {"x": ax, "y": ay, "new_x": ax, "new_y": ay, "pixel_x": px, "pixel_y": py, "selected": 1}
    )
    spots.to_csv(out / "spots.tsv", sep="\t", index=False)
    genes = [f"G{i}" for i in range(10)]
    counts = pd.DataFrame(rng.poisson(3, (len(ids), len(genes))), index=ids, columns=genes)
    counts.to_csv(out / "counts.tsv", sep="\t")
    return {"counts": out / "counts.tsv", "spots": out / "spots.tsv", "image": out / "img.jpg"}


def tiny_model(genes):
    """A randomly initialised dual encoder (timm's test_resnet, 32 px patches) as ``load_model`` returns it."""
    import torch

    from histokg.checkpoint import LoadedModel
    from histokg.models import DualEncoder, ModelConfig
    from histokg.priors import PriorConfig
    from histokg.st.pairing import PairingConfig

    cfg = ModelConfig(image_encoder="test_resnet", embed_dim=8, expr_hidden=(8,))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DualEncoder(cfg, len(genes)).eval()
    return LoadedModel(
        model=model,
        config=cfg,
        pairing=PairingConfig(patch_um=112.0, patch_px=32),
        genes=list(genes),
        loss="infonce",
        prior=PriorConfig(),
        checkpoint=Path("tiny.pt"),
        sha256="0" * 64,
        meta={},
    )


def run_cli(capsys, *args) -> tuple[int, str]:
    """``histokg ARGS`` in this process: (exit status, stderr)."""
    from histokg.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def one_line_error(capsys, *args) -> str:
    """Run ``histokg ARGS``: exit status 2 and one ``error:`` line on stderr (no traceback); that line."""
    code, err = run_cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]
