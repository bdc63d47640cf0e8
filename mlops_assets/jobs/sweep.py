"""``cd_sweep``: the hyper-parameter sweep of the change-detection U-Net, from the Launchpad.

The job materialises ``cd/sweep`` alone (it reads the tiles already there); its run config is the
asset's, with every knob (preset, trials, timeout, workers, pruner and its settings, search space,
seed, device). The evaluation scenes (``eval/scenes.json``) are never swept on.
``mlops-assets sweep`` launches the same job. The asset key comes from `mlops_assets.keys`, so
loading the job does not import PyTorch.
"""

import dagster as dg

from mlops_assets import keys

SWEEP_KEY = keys.CD_SWEEP
SWEEP_OP = keys.CD_SWEEP_OP

cd_sweep_job = dg.define_asset_job(
    "cd_sweep",
    selection=dg.AssetSelection.assets(SWEEP_KEY),
    description="An Optuna study of the CD U-Net's settings on every labelled scene's tiles "
    "(trials as MLflow child runs); cd/model trains with its best params when asked to.",
)
