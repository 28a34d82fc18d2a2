"""cptlab-compare: put the runs of a sweep side by side (forgetting curves, learning/forgetting
trade-off, one summary table) to choose a replay ratio, adapter rank or learning rate."""
