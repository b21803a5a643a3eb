"""The model: networks (``nets/``), the staging model around them, model files, their metadata and the zoo."""
