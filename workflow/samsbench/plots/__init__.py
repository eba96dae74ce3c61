"""Drawing only: each function takes frames and returns a matplotlib figure; the stages
(samsbench.stages.figures) read the inputs and write the files."""
