"""Run directories, stage markers and the stage pipeline."""
