"""Matplotlib figures drawn from stored results (never recomputing them).

Every function takes an optional ``ax`` and returns the figure.
"""
