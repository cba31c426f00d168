"""peft-continual: continual multi-task p-tuning for Hugging Face PEFT."""

__version__ = "0.1.0.dev0"
