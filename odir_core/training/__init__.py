"""Training layer: the experiment config (schema, TOML files, flags), the run skeleton (run folder and lock,
datasets, epoch metrics and record, history, early stopping, console, TensorBoard), schedules, class weights,
the losses' float64 formulas, the ranks and collectives of a data-parallel run, devices and the frozen-backbone
feature cache; shared by both trainers, no framework code."""
