"""The MLflow aliases every model family uses, apart from `mlops_assets.core.tracking`.

Asset configs and sensors name these when the code location loads; importing them from here keeps
MLflow itself out of that load (`mlops_assets.core.tracking` imports it).
"""

CHAMPION = "champion"
CHALLENGER = "challenger"
