"""protege: fine-tune small LLMs on the output of large LLMs."""

__version__ = "0.1.0"
