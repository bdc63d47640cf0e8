"""``cd_sweep``: the hyper-parameter sweep of the change-detection U-Net, from the Launchpad.

The job materialises ``cd/sweep`` alone (it reads the tiles already there); its run config is the
asset's, with every knob (preset, trials, timeout, workers, pruner, search space, scenes left out).
``mlops-assets sweep`` launches the same job. The asset key is spelled out here, as in
`mlops_assets.sensors.jobs`, so loading the job does not import PyTorch.
"""

import dagster as dg

SWEEP_KEY = dg.AssetKey(["cd", "sweep"])
SWEEP_OP = "cd__sweep"

cd_sweep_job = dg.define_asset_job(
    "cd_sweep",
    selection=dg.AssetSelection.assets(SWEEP_KEY),
    description="An Optuna study of the CD U-Net's settings on every labelled scene's tiles "
    "(trials as MLflow child runs); cd/model trains with its best params when asked to.",
)
