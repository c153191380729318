"""Built-in evaluation tasks, one module per benchmark, imported on demand by ``evals.registry``."""
