"""Training layer: the experiment config and its CLI, the run skeleton (run folder and lock, datasets,
epoch record, history, console, TensorBoard), schedules, class weights, distributed collectives,
devices and the frozen-backbone feature cache; shared by both trainers, no framework code."""
