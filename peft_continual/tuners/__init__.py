"""PEFT methods of this library, each shaped like PEFT's ``tuners/<method>/`` packages (config, model, layers)."""
