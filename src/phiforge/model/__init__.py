"""The Phi-4 architecture on Hugging Face ``Phi3ForCausalLM``: presets and checkpoints."""
