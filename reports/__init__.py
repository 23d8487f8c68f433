"""The latency report builder (pandas + matplotlib), reading run folders."""
