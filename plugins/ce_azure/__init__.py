"""The ``azure_logs_ingestion`` log sink: Sentinel / Log Analytics through the Logs Ingestion API."""

from __future__ import annotations

from ce_azure.sink import AzureLogsIngestionOptions, AzureLogsIngestionSink

__all__ = ["AzureLogsIngestionOptions", "AzureLogsIngestionSink"]
