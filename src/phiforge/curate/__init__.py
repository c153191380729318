"""Data curation (Phi-4 report §2.3, App. B): decontamination against evaluation benchmarks."""
