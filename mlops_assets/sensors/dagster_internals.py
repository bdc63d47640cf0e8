"""The only place the package reaches into Dagster's private modules, and why.

Dagster 1.13 has no public way for a sensor to request a backfill:
`dg.RunRequest.for_asset_graph_subset` is public but takes an ``AssetGraphSubset``, which is not
exported (upstream, dagster-io/dagster #22681 kept it private; #34096, open, proposes
``RunRequest.for_asset_partition_range``). Nor does it export the record type of an asset check's
execution history, which the quality sensor reads.

Everything private is imported here, so a Dagster upgrade that moves them breaks one module (and
``mlops_assets_tests/sensors/test_dagster_internals.py``), not the sensors' logic. When Dagster
publishes these, import them from ``dagster`` here and nowhere else changes.
"""

from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.execution.backfill import (
    BULK_ACTION_TERMINAL_STATUSES,
    BulkActionsFilter,
    PartitionBackfill,
)
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)

__all__ = [
    "BULK_ACTION_TERMINAL_STATUSES",
    "AssetCheckExecutionRecord",
    "AssetCheckExecutionRecordStatus",
    "AssetGraph",
    "AssetGraphSubset",
    "AssetKeyPartitionKey",
    "BulkActionsFilter",
    "PartitionBackfill",
]
