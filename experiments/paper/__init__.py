"""The paper's experiments (outlier rejection, dataset extension, multi-modal aggregation)
and `curate`, the product command for a user's own data."""
