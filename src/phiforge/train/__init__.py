"""Pretraining and midtraining: packing, the mixture sampler, LR schedule and trainer."""
