"""Evaluation: the metric set (metrics, clustering, probe, evaluate) and the confirmation's statistics (confirm)."""
