"""The paper's experiments: outlier rejection, dataset extension, multi-modal aggregation."""
