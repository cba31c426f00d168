"""The library's version: the package metadata's (``pyproject.toml`` reads it from here) and the one every saved
``adapter_config.json`` records (``ContinualPromptConfig.peft_continual_version``)."""

__version__ = "0.1.0.dev1"  # dev1: configs carry peft_continual_version
