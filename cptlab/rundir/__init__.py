"""Layer 1 (a leaf): the files of a run directory, named and read/written in one place."""
