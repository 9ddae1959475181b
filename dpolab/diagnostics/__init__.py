"""Diagnostics of preference data and training (edit distances between responses, ...)."""

from dpolab.diagnostics.edit_distance import DEFAULT_EDGES, bucket_pairs, edit_bucket, token_edit_distance

__all__ = ["DEFAULT_EDGES", "bucket_pairs", "edit_bucket", "token_edit_distance"]
