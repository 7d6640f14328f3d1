"""Thin experiment scripts over the losslab library; run each as ``python -m experiments.<name>``."""
